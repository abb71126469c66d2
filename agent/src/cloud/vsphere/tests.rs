//! Decoding of vim25 replies in the shapes real vCenter sends (xsi:type on polymorphic
//! values, `type` and `xsi:type` together on ManagedObjectReference values), and a
//! property test that the decoders never panic on arbitrary input.
use proptest::prelude::*;

use super::error::Error;
use super::inventory;
use super::soap::{self, Call};
use super::types::*;

const ENV_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body>"#;
const ENV_TAIL: &str = "</soapenv:Body></soapenv:Envelope>";

fn env(body: &str) -> String {
    format!("{ENV_HEAD}{body}{ENV_TAIL}")
}

/// A vCenter 7 RetrievePropertiesEx page: one VM with an RDM, an independent disk, an
/// e1000e on a distributed port group, EFI with secure boot, a two-level snapshot tree,
/// plus its folder chain, host and port group; and a token for the next page.
fn vcenter_page() -> String {
    env(
        r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><token>1</token>
<objects><obj type="VirtualMachine">vm-1001</obj>
<propSet><name>name</name><val xsi:type="xsd:string">app &amp; db [x] ü/1</val></propSet>
<propSet><name>parent</name><val type="Folder" xsi:type="ManagedObjectReference">group-v22</val></propSet>
<propSet><name>runtime.host</name><val type="HostSystem" xsi:type="ManagedObjectReference">host-10</val></propSet>
<propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOn</val></propSet>
<propSet><name>runtime.consolidationNeeded</name><val xsi:type="xsd:boolean">false</val></propSet>
<propSet><name>config.firmware</name><val xsi:type="xsd:string">efi</val></propSet>
<propSet><name>config.bootOptions</name><val xsi:type="VirtualMachineBootOptions"><bootDelay>0</bootDelay><efiSecureBootEnabled>true</efiSecureBootEnabled></val></propSet>
<propSet><name>config.hardware.numCPU</name><val xsi:type="xsd:int">4</val></propSet>
<propSet><name>config.hardware.memoryMB</name><val xsi:type="xsd:int">8192</val></propSet>
<propSet><name>config.version</name><val xsi:type="xsd:string">vmx-19</val></propSet>
<propSet><name>config.changeTrackingEnabled</name><val xsi:type="xsd:boolean">true</val></propSet>
<propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
<VirtualDevice xsi:type="VirtualLsiLogicSASController"><key>1000</key><deviceInfo><label>SCSI controller 0</label><summary>LSI Logic SAS</summary></deviceInfo><busNumber>0</busNumber><device>2000</device></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label><summary>41,943,040 KB</summary></deviceInfo><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds-ssd 01] app/app.vmdk</fileName><datastore type="Datastore">datastore-33</datastore><diskMode>persistent</diskMode><thinProvisioned>false</thinProvisioned><changeId>52 6b 9e 1a 7f a1 2e 44-a8 5e 0c 8a 64 d5 8b 26/17</changeId></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>41943040</capacityInKB><capacityInBytes>42949672960</capacityInBytes></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2001</key><deviceInfo><label>Hard disk 2</label><summary>x</summary></deviceInfo><backing xsi:type="VirtualDiskRawDiskMappingVer1BackingInfo"><fileName>[ds-ssd 01] app/app_1.vmdk</fileName><datastore type="Datastore">datastore-33</datastore><compatibilityMode>physicalMode</compatibilityMode><diskMode>independent_persistent</diskMode></backing><controllerKey>1000</controllerKey><unitNumber>1</unitNumber><capacityInKB>1048576</capacityInKB></VirtualDevice>
<VirtualDevice xsi:type="VirtualE1000e"><key>4000</key><deviceInfo><label>Network adapter 1</label><summary>DVSwitch</summary></deviceInfo><backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>50 2a</switchUuid><portgroupKey>dvportgroup-44</portgroupKey><portKey>12</portKey></port></backing><connectable><startConnected>true</startConnected><connected>true</connected></connectable><controllerKey>100</controllerKey><unitNumber>7</unitNumber><addressType>assigned</addressType><macAddress>00:50:56:aa:bb:cc</macAddress></VirtualDevice>
</val></propSet>
<propSet><name>guest.net</name><val xsi:type="ArrayOfGuestNicInfo"><GuestNicInfo><network>prod</network><ipAddress>10.1.2.3</ipAddress><ipAddress>fe80::1</ipAddress><macAddress>00:50:56:aa:bb:cc</macAddress><connected>true</connected><deviceConfigId>4000</deviceConfigId></GuestNicInfo></val></propSet>
<propSet><name>snapshot</name><val xsi:type="VirtualMachineSnapshotInfo"><currentSnapshot type="VirtualMachineSnapshot">snapshot-7</currentSnapshot><rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-5</snapshot><vm type="VirtualMachine">vm-1001</vm><name>before upgrade</name><description></description><id>1</id><createTime>2024-01-01T00:00:00Z</createTime><state>poweredOff</state><quiesced>false</quiesced><childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-7</snapshot><vm type="VirtualMachine">vm-1001</vm><name>osm-sync-3</name><description>[osm-managed] x</description><id>2</id><createTime>2024-01-02T00:00:00Z</createTime><state>poweredOn</state><quiesced>false</quiesced></childSnapshotList></rootSnapshotList></val></propSet>
</objects>
<objects><obj type="Folder">group-v22</obj><propSet><name>name</name><val xsi:type="xsd:string">prod</val></propSet><propSet><name>parent</name><val type="Folder" xsi:type="ManagedObjectReference">group-v3</val></propSet></objects>
<objects><obj type="Folder">group-v3</obj><propSet><name>name</name><val xsi:type="xsd:string">vm</val></propSet><propSet><name>parent</name><val type="Datacenter" xsi:type="ManagedObjectReference">datacenter-2</val></propSet></objects>
<objects><obj type="Datacenter">datacenter-2</obj><propSet><name>name</name><val xsi:type="xsd:string">Paris</val></propSet><propSet><name>parent</name><val type="Folder" xsi:type="ManagedObjectReference">group-d1</val></propSet></objects>
<objects><obj type="Folder">group-d1</obj><propSet><name>name</name><val xsi:type="xsd:string">Datacenters</val></propSet></objects>
<objects><obj type="HostSystem">host-10</obj><propSet><name>name</name><val xsi:type="xsd:string">esx1.example.com</val></propSet><propSet><name>config.network.vnic</name><val xsi:type="ArrayOfHostVirtualNic"><HostVirtualNic><device>vmk0</device><spec><ip><dhcp>false</dhcp><ipAddress>192.168.10.11</ipAddress></ip></spec></HostVirtualNic></val></propSet></objects>
<objects><obj type="DistributedVirtualPortgroup">dvportgroup-44</obj><propSet><name>name</name><val xsi:type="xsd:string">prod-vlan 20</val></propSet><propSet><name>key</name><val xsi:type="xsd:string">dvportgroup-44</val></propSet></objects>
</returnval></RetrievePropertiesExResponse>"#,
    )
}

#[test]
fn a_vcenter_page_decodes_into_the_vm_with_every_field() {
    let r = soap::decode_retrieve(&vcenter_page()).unwrap();
    assert_eq!(r.token.as_deref(), Some("1"));
    assert_eq!(r.objects.len(), 7);
    let inv = inventory::build(&MoRef::new("Folder", "group-d1"), &r.objects).unwrap();
    assert_eq!(inv.vms.len(), 1);
    let v = &inv.vms[0];
    assert_eq!(v.name, "app & db [x] ü/1");
    assert_eq!(v.inventory_path, "/Paris/vm/prod/app & db [x] ü/1");
    assert_eq!(v.datacenter, "Paris");
    assert_eq!(
        (v.host.name.as_str(), v.host.address.as_str()),
        ("esx1.example.com", "192.168.10.11")
    );
    assert_eq!((v.firmware.as_str(), v.secure_boot), ("efi", true));
    assert_eq!((v.cpus, v.memory_mib, v.hardware_version.as_str()), (4, 8192, "vmx-19"));
    assert!(v.cbt_enabled && !v.consolidation_needed);
    let d0 = &v.disks[0];
    assert_eq!(d0.datastore, "ds-ssd 01");
    assert_eq!(d0.capacity_bytes, 42949672960);
    assert_eq!(d0.controller_type, "VirtualLsiLogicSASController");
    assert!(!d0.thin && !d0.independent && !d0.rdm && d0.change_tracking);
    assert_eq!(
        d0.change_id.as_deref(),
        Some("52 6b 9e 1a 7f a1 2e 44-a8 5e 0c 8a 64 d5 8b 26/17")
    );
    let d1 = &v.disks[1];
    assert!(d1.rdm && d1.independent && !d1.change_tracking);
    assert_eq!(
        (d1.rdm_mode.as_str(), d1.capacity_bytes, d1.unit_number),
        ("physicalMode", 1 << 30, 1)
    );
    let n = &v.nics[0];
    assert_eq!(n.adapter_type, "e1000e");
    assert!(n.distributed && n.connected);
    assert_eq!(
        (n.network_name.as_str(), n.network_key.as_str()),
        ("prod-vlan 20", "dvportgroup-44")
    );
    assert_eq!(
        (n.ipv4.clone(), n.ipv6.clone()),
        (vec!["10.1.2.3".to_string()], vec!["fe80::1".to_string()])
    );
    assert_eq!((v.snapshots.count, v.snapshots.depth), (2, 2));
    assert_eq!(v.snapshots.current.as_deref(), Some("snapshot-7"));
    assert!(!v.snapshots.list[0].osm && v.snapshots.list[1].osm);
    assert!(inv.folders.contains(&"/Paris/vm/prod".to_string()));
}

#[test]
fn the_simulators_reply_decodes_too() {
    let xml = include_str!("fixtures/retrieve_vms.xml");
    let r = soap::decode_retrieve(xml).unwrap();
    assert!(!r.objects.is_empty());
    let inv = inventory::build(&MoRef::new("Folder", "group-d1"), &r.objects).unwrap();
    let v = inv.vms.iter().find(|v| v.name == "osm-linux-1").unwrap();
    assert_eq!(v.disks[0].datastore_path, "[datastore1] osm-linux-1/osm-linux-1.vmdk");
    assert_eq!(v.nics.len(), 2);
    assert_eq!(v.nics[0].ipv6, vec!["2001:db8::11".to_string()]);
}

#[test]
fn faults_become_typed_errors_naming_what_is_wrong() {
    let no_perm = env(
        r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Permission to perform this operation was denied.</faultstring><detail><NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><object type="VirtualMachine">vm-7</object><privilegeId>VirtualMachine.State.CreateSnapshot</privilegeId></NoPermissionFault></detail></soapenv:Fault>"#,
    );
    let e = Error::from_fault(soap::decode_fault(&no_perm).unwrap(), "u");
    let text = e.to_string();
    assert!(matches!(e, Error::NoPermission { .. }), "{e:?}");
    assert!(
        text.contains("VirtualMachine.State.CreateSnapshot") && text.contains("VirtualMachine:vm-7"),
        "{text}"
    );

    let login = env(
        r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Cannot complete login due to an incorrect user name or password.</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault>"#,
    );
    let e = Error::from_fault(soap::decode_fault(&login).unwrap(), "osm@vsphere.local");
    assert!(e.to_string().contains("wrong user name or password"), "{e}");

    let locked = env(
        r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Unable to access file [ds] a/a.vmdk since it is locked</faultstring><detail><FileLockedFault xmlns="urn:vim25" xsi:type="FileLocked"><file>[ds] a/a.vmdk</file></FileLockedFault></detail></soapenv:Fault>"#,
    );
    assert!(matches!(
        Error::from_fault(soap::decode_fault(&locked).unwrap(), "u"),
        Error::FileLocked(_)
    ));
    assert!(soap::decode_fault(&env("<LogoutResponse xmlns=\"urn:vim25\"></LogoutResponse>")).is_none());
}

#[test]
fn task_info_carries_the_error_message_and_the_result() {
    let info = r#"<val xsi:type="TaskInfo"><key>task-9</key><task type="Task">task-9</task><descriptionId>VirtualMachine.createSnapshot</descriptionId><state>error</state><error><fault xsi:type="InvalidState"></fault><localizedMessage>The operation is not allowed in the current state.</localizedMessage></error></val>"#;
    let t: TaskInfo = quick_xml::de::from_str(info).unwrap();
    assert_eq!(t.state, "error");
    let e = t.error.unwrap();
    let f = soap::fault_of(e.fault, e.localized_message);
    assert_eq!(f.kind, "InvalidState");
    assert!(Error::from_fault(f, "u")
        .to_string()
        .contains("not allowed in the current state"));
    let ok = r#"<val xsi:type="TaskInfo"><state>success</state><result type="VirtualMachineSnapshot" xsi:type="ManagedObjectReference">snapshot-12</result></val>"#;
    let t: TaskInfo = quick_xml::de::from_str(ok).unwrap();
    assert_eq!(t.result, Some(MoRef::new("VirtualMachineSnapshot", "snapshot-12")));
}

#[test]
fn changed_areas_and_scalars_decode() {
    let xml = env(
        r#"<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>268435456</startOffset><length>268435456</length><changedArea><start>268500992</start><length>65536</length></changedArea><changedArea><start>300000256</start><length>512</length></changedArea></returnval></QueryChangedDiskAreasResponse>"#,
    );
    let d: DiskChangeInfo = soap::decode_one("QueryChangedDiskAreas", &xml).unwrap();
    assert_eq!((d.start_offset, d.length, d.changed_area.len()), (1 << 28, 1 << 28, 2));
    let empty = env(
        r#"<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>0</startOffset><length>268435456</length></returnval></QueryChangedDiskAreasResponse>"#,
    );
    let d: DiskChangeInfo = soap::decode_one("QueryChangedDiskAreas", &empty).unwrap();
    assert!(d.changed_area.is_empty());
    let bools = env(
        r#"<HasPrivilegeOnEntityResponse xmlns="urn:vim25"><returnval>true</returnval><returnval>false</returnval></HasPrivilegeOnEntityResponse>"#,
    );
    let v: Vec<Text> = soap::decode_all("HasPrivilegeOnEntity", &bools).unwrap();
    assert_eq!(v.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["true", "false"]);
}

#[test]
fn requests_serialize_with_typed_morefs_and_escaped_text() {
    let vm = MoRef::new("VirtualMachine", "vm-1");
    let xml = soap::encode(&Call::CreateSnapshotTask(CreateSnapshot {
        this: &vm,
        name: "osm-a<b>&\"c\"",
        description: "d",
        memory: false,
        quiesce: true,
    }))
    .unwrap();
    assert!(xml.contains(r#"<soapenv:Body><CreateSnapshot_Task><_this type="VirtualMachine">vm-1</_this><name>osm-a&lt;b&gt;&amp;"c"</name><description>d</description><memory>false</memory><quiesce>true</quiesce></CreateSnapshot_Task></soapenv:Body>"#), "{xml}");
    assert!(xml.contains(r#"xmlns="urn:vim25""#));
    let view = MoRef::new("ContainerView", "session[x]y");
    let spec = PropertyFilterSpec {
        prop_set: vec![PropertySpec {
            kind: "VirtualMachine".into(),
            path_set: vec!["name".into(), "config.hardware.device".into()],
        }],
        object_set: vec![ObjectSpec {
            obj: view,
            skip: true,
            select_set: vec![TraversalSpec {
                xsi_type: "TraversalSpec",
                kind: "ContainerView".into(),
                path: "view".into(),
                skip: false,
            }],
        }],
    };
    let pc = MoRef::new("PropertyCollector", "propertyCollector");
    let xml = soap::encode(&Call::RetrievePropertiesEx(RetrievePropertiesEx {
        this: &pc,
        spec_set: vec![spec],
        options: RetrieveOptions { max_objects: 100 },
    }))
    .unwrap();
    assert!(xml.contains(r#"<selectSet xsi:type="TraversalSpec"><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>"#), "{xml}");
    assert!(
        xml.contains("<pathSet>name</pathSet><pathSet>config.hardware.device</pathSet>"),
        "{xml}"
    );
    assert!(xml.contains("<options><maxObjects>100</maxObjects></options>"), "{xml}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: the decoders return errors, never panic.
    #[test]
    fn decoders_never_panic_on_garbage(s in "\\PC{0,400}") {
        let _ = soap::decode_retrieve(&s);
        let _ = soap::decode_fault(&s);
        let _ = soap::decode_one::<DiskChangeInfo>("x", &s);
    }

    /// Mutations of a real page (truncation, spliced bytes): errors or results, no panic.
    #[test]
    fn decoders_never_panic_on_damaged_pages(cut in 0usize..6000, at in 0usize..6000, junk in "[<>/=\"a-z&;: ]{0,12}") {
        let page = vcenter_page();
        let cut = cut.min(page.len());
        let at = at.min(page.len());
        for doc in [page.get(..cut), page.get(..at).map(|a| format!("{a}{junk}{}", page.get(at..).unwrap_or(""))).as_deref()] {
            let Some(doc) = doc else { continue };
            if let Ok(r) = soap::decode_retrieve(doc) {
                let _ = inventory::build(&MoRef::new("Folder", "group-d1"), &r.objects);
            }
            let _ = soap::decode_fault(doc);
        }
    }
}
