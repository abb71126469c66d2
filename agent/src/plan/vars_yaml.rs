//! The seed kit's `vars.yaml`, accepted as it is. Every key is either mapped onto the
//! plan, or named in a warning (known to the kit but not needed by osm, or unknown).
use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::model::{Cutover, Destination, FlavorChoice, Mode, Network, Plan, Secret, Source};

/// Keys of the kit that osm does not need, and why.
const NOT_NEEDED: &[(&str, &str)] = &[
    ("runner_from_aee", "osm runs on the conversion host itself"),
    (
        "already_deploy_conversion_host",
        "osm runs on the conversion host itself",
    ),
    (
        "copy_openstack_credentials_to_conv_host",
        "osm reads the credentials where it runs",
    ),
    ("copy_metadata_to_conv_host", "osm reads the credentials where it runs"),
    ("os_migrate_vmw_data_dir", "osm keeps its state in /var/lib/osm"),
];

pub fn parse(text: &str) -> Result<(Plan, Vec<String>), String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let Value::Mapping(mut m) = doc else {
        return Err("expected a mapping of variables at the top level".into());
    };
    let mut w = Vec::new();
    let mut take = |k: &str| m.remove(k);

    let vcenter = req_str(take("vcenter_hostname"), "vcenter_hostname")?;
    let password = match (take("vcenter_password_file"), take("vcenter_password")) {
        (Some(f), _) => Secret::File(str_of(f, "vcenter_password_file")?),
        (None, Some(p)) => Secret::Inline(str_of(p, "vcenter_password")?),
        (None, None) => return Err("vcenter_password (or vcenter_password_file) is missing".into()),
    };
    let libdir = [
        "vddk_libdir",
        "import_workloads_libdir",
        "conversion_host_vmware_vix_disklib",
    ]
    .into_iter()
    .filter_map(|k| take(k).map(|v| str_of(v, k)))
    .next()
    .transpose()?;
    let source = Source {
        vcenter,
        user: req_str(take("vcenter_username"), "vcenter_username")?,
        password,
        datacenter: opt_str(take("vcenter_datacenter"), "vcenter_datacenter")?,
        folder: opt_str(take("vcenter_folder"), "vcenter_folder")?,
        esxi_host: opt_str(take("esxi_hostname"), "esxi_hostname")?,
        thumbprint: opt_str(take("vddk_thumbprint"), "vddk_thumbprint")?,
        ca_file: None,
        vddk_libdir: libdir,
        transport: None,
    };

    let mut destination = Destination {
        cloud: opt_str(take("os_cloud_environ"), "os_cloud_environ")?,
        ..Default::default()
    };
    match take("dst_cloud") {
        None => {}
        Some(Value::String(name)) => destination.cloud = Some(name),
        Some(v @ Value::Mapping(_)) => {
            destination.dst_cloud = Some(serde_json::to_value(&v).map_err(|e| format!("dst_cloud: {e}"))?)
        }
        Some(_) => {
            return Err("dst_cloud must be a cloud name (clouds.yaml) or a dictionary of auth parameters".into())
        }
    }

    let vms = match take("vms_list") {
        Some(Value::Sequence(s)) => s
            .into_iter()
            .map(|v| str_of(v, "vms_list[]"))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("vms_list must be a list of VM names".into()),
        None => return Err("vms_list is missing: list the VMs to migrate".into()),
    };

    let mapped = opt_bool(take("used_mapped_networks"), "used_mapped_networks")?.unwrap_or(false);
    let map = match take("network_map") {
        Some(Value::Mapping(nm)) => string_map(nm, "network_map")?,
        Some(_) => return Err("network_map must map port group names to networks".into()),
        None => BTreeMap::new(),
    };
    if !mapped && !map.is_empty() {
        w.push("network_map is ignored because used_mapped_networks is false".into());
    }
    let network = Network {
        map: if mapped { map } else { BTreeMap::new() },
        default_network: opt_str(take("openstack_private_network"), "openstack_private_network")?,
        create_ports: opt_bool(take("os_migrate_create_network_port"), "os_migrate_create_network_port")?
            .unwrap_or(true),
        fixed_ips: opt_bool(take("use_fixed_ips"), "use_fixed_ips")?.unwrap_or(false),
    };

    let security_groups = match take("security_groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        Some(Value::Sequence(s)) => s
            .into_iter()
            .map(|v| str_of(v, "security_groups[]"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("security_groups must be a name/id or a list of them".into()),
    };
    let flavor = match (
        take("flavor_uuid"),
        opt_bool(take("use_existing_flavor"), "use_existing_flavor")?,
    ) {
        (Some(id), _) => FlavorChoice::Id(str_of(id, "flavor_uuid")?),
        (None, Some(false)) => FlavorChoice::Create,
        (None, _) => FlavorChoice::Closest,
    };
    // The kit copies without CBT from a live VM; osm's safe equivalent is a cold migration.
    let mode = match opt_bool(take("cbt_sync"), "cbt_sync")? {
        Some(true) => Mode::Warm,
        _ => Mode::Cold,
    };
    let cutover = match opt_bool(take("cutover"), "cutover")? {
        Some(false) => Cutover::Manual,
        _ => Cutover::Immediate,
    };
    let volume_type_mapping = match take("volume_type_mapping") {
        Some(Value::Mapping(vm)) => string_map(vm, "volume_type_mapping")?,
        Some(_) => return Err("volume_type_mapping must map datastore names to volume types".into()),
        None => BTreeMap::new(),
    };
    let plan = Plan {
        source,
        destination,
        vms,
        mode,
        cutover,
        network,
        flavor,
        security_groups,
        skip_conversion: opt_bool(take("skip_conversion"), "skip_conversion")?.unwrap_or(false),
        volume_type: opt_str(take("cinder_volume_type"), "cinder_volume_type")?,
        volume_type_mapping,
        availability_zone: opt_str(take("availability_zone"), "availability_zone")?,
        ssh_key_name: opt_str(take("ssh_key_name"), "ssh_key_name")?,
        tear_down: opt_bool(take("os_migrate_tear_down"), "os_migrate_tear_down")?.unwrap_or(false),
        local_disk_path: opt_str(
            take("import_workloads_local_disk_path"),
            "import_workloads_local_disk_path",
        )?,
        instance_uuid: opt_str(take("import_workloads_instance_uuid"), "import_workloads_instance_uuid")?,
        debug: opt_bool(take("import_workloads_debug"), "import_workloads_debug")?.unwrap_or(false),
        keep_source_off_on_failure: false,
        new_volumes_read_as_zeros: true,
    };
    for (k, _) in m {
        let k = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
        match NOT_NEEDED.iter().find(|(n, _)| *n == k) {
            Some((_, why)) => w.push(format!("{k} is not used: {why}")),
            None => w.push(format!(
                "unknown key '{k}' is ignored; check its spelling against docs/plan.md"
            )),
        }
    }
    Ok((plan, w))
}

fn str_of(v: Value, key: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{key} must be a string")),
    }
}

fn req_str(v: Option<Value>, key: &str) -> Result<String, String> {
    opt_str(v, key)?.ok_or_else(|| format!("{key} is missing"))
}

/// A string, with YAML null and "" read as absent.
fn opt_str(v: Option<Value>, key: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(str_of(v, key)?).filter(|s| !s.is_empty())),
    }
}

fn opt_bool(v: Option<Value>, key: &str) -> Result<Option<bool>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("no") => Ok(Some(false)),
        Some(_) => Err(format!("{key} must be true or false")),
    }
}

fn string_map(m: Mapping, key: &str) -> Result<BTreeMap<String, String>, String> {
    m.into_iter()
        .map(|(k, v)| Ok((str_of(k, key)?, str_of(v, key)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
esxi_hostname: 10.0.0.7
vcenter_hostname: 10.0.0.7
vcenter_username: root
vcenter_password: root
vcenter_datacenter: Datacenter
dst_cloud:
  auth:
    auth_url: https://openstack.dst.cloud:13000/v3
    username: tenant
    project_name: migration
    user_domain_name: osm.com
    password: password
  region_name: regionOne
  interface: public
  identity_api_version: 3
used_mapped_networks: true
network_map:
  VM Network: private
openstack_private_network: 81cc01d2-5e47-4fad-b387-32686ec71fa4
security_groups: 4f077e64-bdf6-4d2a-9f2c-c5588f4948ce
use_existing_flavor: true
os_migrate_create_network_port: false
os_migrate_vmw_data_dir: /opt/os-migrate
copy_openstack_credentials_to_conv_host: false
os_migrate_tear_down: true
cbt_sync: true
cutover: false
vms_list:
  - rhel-1
  - "web [prod] ünïcode 1"
colour: blue
"#;

    #[test]
    fn the_seed_example_is_accepted_and_unused_keys_are_named() {
        let (p, w) = parse(SEED).unwrap();
        assert_eq!(p.source.vcenter, "10.0.0.7");
        assert_eq!(p.source.password, Secret::Inline("root".into()));
        assert_eq!(p.vms, vec!["rhel-1", "web [prod] ünïcode 1"]);
        assert_eq!(p.network.map.get("VM Network").map(String::as_str), Some("private"));
        assert!(!p.network.create_ports);
        assert_eq!(p.security_groups, vec!["4f077e64-bdf6-4d2a-9f2c-c5588f4948ce"]);
        assert_eq!(
            (p.mode, p.cutover.clone(), p.flavor.clone()),
            (Mode::Warm, Cutover::Manual, FlavorChoice::Closest)
        );
        assert!(p.tear_down);
        let dst = p.destination.dst_cloud.unwrap();
        assert_eq!(dst["auth"]["username"], "tenant");
        assert!(
            w.iter().any(|x| x.starts_with("os_migrate_vmw_data_dir is not used")),
            "{w:?}"
        );
        assert!(w.iter().any(|x| x.contains("unknown key 'colour'")), "{w:?}");
        let mut w2 = w.clone();
        p_validate(SEED, &mut w2);
        assert!(w2.iter().any(|x| x.contains("password is written in the plan")));
    }

    fn p_validate(text: &str, w: &mut Vec<String>) {
        parse(text).unwrap().0.validate(w).unwrap();
    }

    #[test]
    fn defaults_and_bad_values() {
        let base = "vcenter_hostname: vc\nvcenter_username: u\nvcenter_password_file: /etc/osm/vc.pw\nvms_list: [a]\n";
        let (p, w) = parse(base).unwrap();
        assert_eq!((p.mode, p.flavor), (Mode::Cold, FlavorChoice::Closest));
        assert_eq!(p.source.password, Secret::File("/etc/osm/vc.pw".into()));
        assert!(w.is_empty(), "{w:?}");
        let (p, _) = parse(&format!("{base}flavor_uuid: f-1\nuse_existing_flavor: false\n")).unwrap();
        assert_eq!(p.flavor, FlavorChoice::Id("f-1".into()));
        assert!(parse(&format!("{base}cbt_sync: maybe\n"))
            .unwrap_err()
            .contains("cbt_sync must be true or false"));
        assert!(parse("vcenter_hostname: vc\n")
            .unwrap_err()
            .contains("vcenter_password"));
        let (p, _) = parse(&format!(
            "{base}import_workloads_local_disk_path: /srv/nfs\ncbt_sync: true\n"
        ))
        .unwrap();
        assert!(p.validate(&mut Vec::new()).unwrap_err().contains("cold migration only"));
    }
}
