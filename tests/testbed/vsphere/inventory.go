package main

// The fixed inventory: datacenter DC0, cluster DC0_C0 with two hosts, one local datastore
// backed by <state>/ds, standard networks "VM Network" and "Backup Network", distributed
// port groups DC0_DVPG0/1, and the VMs in vmSpecs (plus -extra-vms plain ones).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type nicSpec struct{ net, ipv4, ipv6 string }

type vmSpec struct {
	name        string
	guestID     string
	disks       []int64  // capacities in bytes (0: from image)
	images      []string // per disk, "" for generated content
	nics        []nicSpec
	poweredOn   bool
	tools       string // running | notRunning | notInstalled
	consolidate bool
	cbt         bool
	snapshots   int // depth of a linear snapshot chain
	small       bool
	folder      string
}

const mib = int64(1 << 20)

func vmSpecs(c config) []vmSpec {
	linux1 := vmSpec{name: "osm-linux-1", guestID: "debian11_64Guest", disks: []int64{1024 * mib}, images: []string{""},
		nics:      []nicSpec{{"VM Network", "192.0.2.11", "2001:db8::11"}, {"DC0_DVPG0", "198.51.100.11", "2001:db8:1::11"}},
		poweredOn: true, tools: "running"}
	if fileExists(c.guestImage) {
		linux1.disks[0], linux1.images[0] = 0, c.guestImage
	}
	linux2 := vmSpec{name: "osm-linux-2disk", guestID: "debian11_64Guest", disks: []int64{512 * mib, 256 * mib}, images: []string{"", ""},
		nics: []nicSpec{{"DC0_DVPG1", "198.51.100.12", "2001:db8:1::12"}}, poweredOn: true, tools: "running"}
	if fileExists(c.guest2Disk1) && fileExists(c.guest2Disk2) {
		linux2.disks, linux2.images = []int64{0, 0}, []string{c.guest2Disk1, c.guest2Disk2}
	}
	specs := []vmSpec{linux1, linux2,
		{name: "osm-cbt-1", guestID: "debian11_64Guest", disks: []int64{1024 * mib, 64 * mib}, images: []string{"", ""},
			nics: []nicSpec{{"VM Network", "192.0.2.21", ""}}, poweredOn: true, tools: "running"},
		{name: "web [prod] ünïcode 1", guestID: "windows9Server64Guest", disks: []int64{128 * mib, 64 * mib, 96 * mib}, images: []string{"", "", ""},
			nics: []nicSpec{{"VM Network", "192.0.2.31", "2001:db8::31"}, {"Backup Network", "203.0.113.31", ""},
				{"DC0_DVPG0", "", "2001:db8:1::31"}}, poweredOn: true, tools: "notRunning"},
		{name: "db-consolidate", guestID: "rhel8_64Guest", disks: []int64{256 * mib}, images: []string{""},
			nics: []nicSpec{{"DC0_DVPG1", "", ""}}, poweredOn: false, tools: "notInstalled", consolidate: true},
		{name: "osm-twin-1", guestID: "debian11_64Guest", disks: []int64{96 * mib, 32 * mib}, images: []string{"", ""},
			nics: []nicSpec{{"VM Network", "192.0.2.51", ""}}, poweredOn: true, tools: "running"},
		{name: "deep-snapshots", guestID: "debian11_64Guest", disks: []int64{64 * mib}, images: []string{""},
			nics: []nicSpec{{"VM Network", "192.0.2.41", ""}}, poweredOn: true, tools: "running", cbt: true, snapshots: 30},
	}
	for i := 1; i <= c.extraVMs; i++ {
		specs = append(specs, vmSpec{name: fmt.Sprintf("scale-%04d", i), guestID: "otherLinux64Guest",
			disks: []int64{64 * mib}, images: []string{""}, nics: []nicSpec{{"VM Network", "", ""}},
			tools: c.extraTools, poweredOn: c.extraTools == "running", small: true, folder: "scale"})
	}
	return specs
}

func fileExists(p string) bool {
	if p == "" {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func buildInventory(ctx context.Context, c *vim25.Client, st *state) error {
	// Flat files of a previous run are kept (moved back into place if the size matches).
	prev := st.dsDir + ".prev"
	_ = os.RemoveAll(prev)
	if _, err := os.Stat(st.dsDir); err == nil {
		if err := os.Rename(st.dsDir, prev); err != nil {
			return err
		}
	}
	defer os.RemoveAll(prev)
	if err := os.MkdirAll(st.dsDir, 0o755); err != nil {
		return err
	}
	finder := find.NewFinder(c, false)
	dc, err := finder.Datacenter(ctx, st.cfg.dcName)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	for _, h := range simulator.Map.All("HostSystem") {
		host := object.NewHostSystem(c, h.Reference())
		dss, err := host.ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return err
		}
		if _, err := dss.CreateLocalDatastore(ctx, st.cfg.dsName, st.dsDir); err != nil {
			return err
		}
		ns, err := host.ConfigManager().NetworkSystem(ctx)
		if err != nil {
			return err
		}
		_ = ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: "Backup Network", VswitchName: "vSwitch0"}) // DuplicateName on the 2nd host
	}
	ds, err := finder.Datastore(ctx, st.cfg.dsName)
	if err != nil {
		return err
	}
	cluster, err := finder.ClusterComputeResource(ctx, "DC0_C0")
	if err != nil {
		return err
	}
	pool, err := cluster.ResourcePool(ctx)
	if err != nil {
		return err
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	subFolders := map[string]*object.Folder{"": folders.VmFolder}
	backings := map[string]types.BaseVirtualDeviceBackingInfo{}
	for i, s := range vmSpecs(st.cfg) {
		if subFolders[s.folder] == nil {
			if subFolders[s.folder], err = folders.VmFolder.CreateFolder(ctx, s.folder); err != nil {
				return err
			}
		}
		if err := createVM(ctx, c, st, finder, backings, subFolders[s.folder], pool, ds, prev, i, s); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

func createVM(ctx context.Context, c *vim25.Client, st *state, finder *find.Finder, backings map[string]types.BaseVirtualDeviceBackingInfo,
	folder *object.Folder, pool *object.ResourcePool, ds *object.Datastore, prev string, idx int, s vmSpec) error {
	spec := types.VirtualMachineConfigSpec{Name: s.name, GuestId: s.guestID, NumCPUs: 2, MemoryMB: 2048,
		Firmware: "bios", Files: &types.VirtualMachineFileInfo{VmPathName: "[" + st.cfg.dsName + "]"}}
	var devs object.VirtualDeviceList
	scsi, _ := devs.CreateSCSIController("pvscsi")
	scsi.GetVirtualDevice().Key = 1000 // device keys as vSphere numbers them
	devs = append(devs, scsi)
	for i := range s.disks {
		if s.images[i] != "" {
			n, err := imageCapacity(s.images[i])
			if err != nil {
				return err
			}
			s.disks[i] = n
		}
		file := fmt.Sprintf("[%s] %s/%s.vmdk", st.cfg.dsName, s.name, s.name)
		if i > 0 {
			file = fmt.Sprintf("[%s] %s/%s_%d.vmdk", st.cfg.dsName, s.name, s.name, i)
		}
		d := devs.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), file)
		d.Key, d.CapacityInBytes, d.CapacityInKB = int32(2000+i), s.disks[i], s.disks[i]/1024
		d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).Uuid = fmt.Sprintf("6000C29%d-%04x-%04x-%04x-%012x", i, idx, i, idx, idx*16+i)
		devs = append(devs, d)
	}
	for i, n := range s.nics {
		b := backings[n.net]
		if b == nil {
			net, err := finder.Network(ctx, n.net)
			if err != nil {
				return err
			}
			if b, err = net.EthernetCardBackingInfo(ctx); err != nil {
				return err
			}
			backings[n.net] = b
		}
		nic, err := devs.CreateEthernetCard("vmxnet3", b)
		if err != nil {
			return err
		}
		card := nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.Key = int32(4000 + i)
		card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
		card.MacAddress = fmt.Sprintf("00:50:56:%02x:%02x:%02x", (idx>>8)&0x3f, idx&0xff, i)
		devs = append(devs, nic)
	}
	var err error
	if spec.DeviceChange, err = devs.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd); err != nil {
		return err
	}
	task, err := folder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	ref := info.Result.(types.ManagedObjectReference)
	vmObj := object.NewVirtualMachine(c, ref)
	vm := getVM(ref)
	st.order = append(st.order, ref)

	// Disk content: previous run's file if it fits, else image copy or generated pattern.
	st.mu.Lock()
	var disks []*disk
	simulator.Map.WithLock(vm, func() { disks = st.vmDisks(vm) })
	st.mu.Unlock()
	for i, d := range disks {
		old := filepath.Join(prev, mustRel(st.dsDir, d.Flat))
		if fi, err := os.Stat(old); err == nil && fi.Size() == d.Capacity {
			if err := os.Rename(old, d.Flat); err != nil {
				return err
			}
			if err := writeDescriptor(d.Flat, d.Capacity); err != nil {
				return err
			}
			continue
		}
		label := fmt.Sprintf("%s/%d", s.name, i)
		if err := prepareFlat(d.Flat, label, s.images[i], d.Capacity, s.small); err != nil {
			return err
		}
	}

	if s.cbt {
		t, err := vmObj.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return err
		}
		st.syncCBT(ref)
	}
	for i := 1; i <= s.snapshots; i++ {
		t, err := vmObj.CreateSnapshot(ctx, fmt.Sprintf("level %d", i), "deep snapshot chain", false, false)
		if err != nil {
			return err
		}
		if err := t.Wait(ctx); err != nil {
			return err
		}
		if cur := currentSnapshot(ref); cur != nil {
			st.afterSnapshot(ref, *cur)
		}
	}
	if s.poweredOn {
		t, err := vmObj.PowerOn(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return err
		}
	}
	simulator.Map.WithLock(vm, func() { setGuest(vm, s) })
	return nil
}

func mustRel(base, p string) string {
	r, err := filepath.Rel(base, p)
	if err != nil {
		return p
	}
	return r
}

// setGuest fills guest.* and runtime flags as VMware Tools would report them.
func setGuest(vm *simulator.VirtualMachine, s vmSpec) {
	if vm.Guest == nil {
		vm.Guest = &types.GuestInfo{}
	}
	g := vm.Guest
	g.GuestId, g.GuestFamily = s.guestID, "linuxGuest"
	if s.guestID[:3] == "win" {
		g.GuestFamily = "windowsGuest"
	}
	switch {
	case s.tools == "running" && s.poweredOn:
		g.ToolsStatus, g.ToolsRunningStatus, g.ToolsVersionStatus2 = types.VirtualMachineToolsStatusToolsOk, "guestToolsRunning", "guestToolsCurrent"
		g.ToolsVersion, g.GuestState, g.HostName = "12352", "running", s.name
	case s.tools == "notInstalled":
		g.ToolsStatus, g.ToolsRunningStatus, g.ToolsVersionStatus2 = types.VirtualMachineToolsStatusToolsNotInstalled, "guestToolsNotRunning", "guestToolsNotInstalled"
		g.ToolsVersion, g.GuestState = "0", "notRunning"
	default:
		g.ToolsStatus, g.ToolsRunningStatus, g.ToolsVersionStatus2 = types.VirtualMachineToolsStatusToolsNotRunning, "guestToolsNotRunning", "guestToolsCurrent"
		g.ToolsVersion, g.GuestState = "12352", "notRunning"
	}
	running := g.ToolsRunningStatus == "guestToolsRunning"
	g.Net, g.IpAddress = nil, ""
	nicIdx := 0
	for _, dev := range vm.Config.Hardware.Device {
		eth, ok := dev.(types.BaseVirtualEthernetCard)
		if !ok || nicIdx >= len(s.nics) || !running {
			continue
		}
		n := s.nics[nicIdx]
		nicIdx++
		card := eth.GetVirtualEthernetCard()
		info := types.GuestNicInfo{Network: n.net, MacAddress: card.MacAddress, Connected: true,
			DeviceConfigId: card.Key, IpConfig: &types.NetIpConfigInfo{}}
		for _, ip := range []struct {
			a   string
			len int32
		}{{n.ipv4, 24}, {n.ipv6, 64}} {
			if ip.a == "" {
				continue
			}
			info.IpAddress = append(info.IpAddress, ip.a)
			info.IpConfig.IpAddress = append(info.IpConfig.IpAddress,
				types.NetIpConfigInfoIpAddress{IpAddress: ip.a, PrefixLength: ip.len, State: "preferred"})
			if g.IpAddress == "" {
				g.IpAddress = ip.a
			}
		}
		g.Net = append(g.Net, info)
	}
	vm.Summary.Guest = &types.VirtualMachineGuestSummary{GuestId: g.GuestId, GuestFullName: g.GuestFullName,
		ToolsStatus: g.ToolsStatus, ToolsVersionStatus2: g.ToolsVersionStatus2, ToolsRunningStatus: g.ToolsRunningStatus,
		HostName: g.HostName, IpAddress: g.IpAddress}
	if s.consolidate {
		vm.Runtime.ConsolidationNeeded = types.NewBool(true)
		vm.Summary.Runtime.ConsolidationNeeded = types.NewBool(true)
	}
}
