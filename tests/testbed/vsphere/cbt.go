package main

// Changed-block tracking. Per disk: a CBT instance id (new each time tracking is
// enabled) and a sequence number bumped by every snapshot; changeId = "<id>/<seq>".
// Every tracked guest write is recorded with the sequence current when it happened,
// so QueryChangedDiskAreas(snapshot S, changeId id/N) = writes with N <= seq < seq(S).
// State is kept in memory and saved to <state>/cbt.json after every change.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type extent struct{ Off, Len int64 }

type write struct {
	Seq int   `json:"seq"` // disk sequence current when written
	O   int64 `json:"off"`
	L   int64 `json:"len"`
}

type disk struct {
	VM       string  `json:"vm"` // VM name
	Key      int32   `json:"key"`
	FileName string  `json:"fileName"` // "[ds] dir/name.vmdk"
	Flat     string  `json:"flat"`     // local flat file
	Capacity int64   `json:"capacity"`
	CBTID    string  `json:"cbtId,omitempty"` // "" while tracking is off
	Seq      int     `json:"seq"`
	Writes   []write `json:"writes,omitempty"`
}

type state struct {
	mu    sync.Mutex // guards the maps below and the flat files
	epoch sync.Mutex // taken before mu: makes CreateSnapshot atomic w.r.t. guest writes
	cfg   config
	dsDir string
	disks map[string]*disk         // "<vm moref>/<key>"
	snaps map[string]map[int32]int // snapshot moref -> disk key -> seq it was given
	// client-taken snapshots (moref values), persisted across restarts (snapshots.go)
	userSnaps map[string]bool
	serving   bool // inventory built: snapshots from now on are the clients'
	order     []types.ManagedObjectReference
	prev      saved // cbt.json of the previous run, read before the inventory rewrites it
}

func newState(c config) *state {
	st := &state{cfg: c, dsDir: filepath.Join(c.stateDir, "ds"),
		disks: map[string]*disk{}, snaps: map[string]map[int32]int{}, userSnaps: map[string]bool{}}
	if b, err := os.ReadFile(filepath.Join(c.stateDir, "cbt.json")); err == nil {
		_ = json.Unmarshal(b, &st.prev)
	}
	return st
}

func getVM(ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

func (st *state) vmNames() []string {
	var out []string
	for _, ref := range st.order {
		if vm := getVM(ref); vm != nil {
			out = append(out, vm.Name)
		}
	}
	return out
}

// findVM accepts a VM name or moref value.
func (st *state) findVM(id string) *simulator.VirtualMachine {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if vm.Name == id || vm.Self.Value == id {
			return vm
		}
	}
	return nil
}

func flatBacking(dev types.BaseVirtualDevice) (*types.VirtualDisk, *types.VirtualDiskFlatVer2BackingInfo) {
	d, ok := dev.(*types.VirtualDisk)
	if !ok {
		return nil, nil
	}
	b, _ := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	return d, b
}

// vmDisks returns the VM's disks in device order, registering unknown ones (and giving
// their flat file the configured capacity). Caller holds st.mu and the VM lock.
func (st *state) vmDisks(vm *simulator.VirtualMachine) []*disk {
	var out []*disk
	for _, dev := range vm.Config.Hardware.Device {
		d, b := flatBacking(dev)
		if b == nil {
			continue
		}
		k := vm.Self.Value + "/" + strconv.Itoa(int(d.Key))
		if x := st.disks[k]; x != nil && x.FileName == b.FileName {
			x.VM = vm.Name
			out = append(out, x)
			continue
		}
		flat := flatPath(st.cfg.dsName, st.dsDir, b.FileName)
		if flat == "" {
			continue
		}
		capacity := d.CapacityInBytes
		if capacity == 0 {
			capacity = d.CapacityInKB * 1024
		}
		if fi, err := os.Stat(flat); err != nil || fi.Size() < capacity {
			if err := os.Truncate(flat, capacity); err != nil {
				log.Printf("disk %s: %v", flat, err)
			}
		}
		x := &disk{VM: vm.Name, Key: d.Key, FileName: b.FileName, Flat: flat, Capacity: capacity}
		st.disks[k] = x
		out = append(out, x)
	}
	return out
}

func cbtEnabled(vm *simulator.VirtualMachine) bool {
	return vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

func newCBTID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] = 0x52
	h := make([]string, 16)
	for i := range b {
		h[i] = fmt.Sprintf("%02x", b[i])
	}
	return strings.Join(h[:8], " ") + "-" + strings.Join(h[8:], " ")
}

func setChangeID(vm *simulator.VirtualMachine, key int32, id string) {
	for _, dev := range vm.Config.Hardware.Device {
		if d, b := flatBacking(dev); b != nil && d.Key == key {
			b.ChangeId = id
		}
	}
}

// syncCBT starts or stops tracking to match config.changeTrackingEnabled (after ReconfigVM).
func (st *state) syncCBT(ref types.ManagedObjectReference) {
	vm := getVM(ref)
	if vm == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	simulator.Map.WithLock(vm, func() {
		on := cbtEnabled(vm)
		for _, d := range st.vmDisks(vm) {
			if on && d.CBTID == "" {
				d.CBTID, d.Seq, d.Writes = newCBTID(), 0, nil
			} else if !on && d.CBTID != "" {
				d.CBTID, d.Seq, d.Writes = "", 0, nil
				setChangeID(vm, d.Key, "")
			}
		}
	})
	st.save()
}

// afterSnapshot gives every tracked disk a new changeId, recorded in the snapshot's own
// (now deep-copied) config and on the VM's current disk backing.
func (st *state) afterSnapshot(vmRef, snapRef types.ManagedObjectReference) {
	vm := getVM(vmRef)
	snap, _ := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	if vm == nil || snap == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	simulator.Map.WithLock(vm, func() {
		// The library copies the config shallowly: detach the snapshot's disks.
		devs := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
		for i, dev := range snap.Config.Hardware.Device {
			devs[i] = dev
			if d, b := flatBacking(dev); b != nil {
				d2, b2 := *d, *b
				d2.Backing = &b2
				devs[i] = &d2
			}
		}
		snap.Config.Hardware.Device = devs
		seqs := map[int32]int{}
		for _, d := range st.vmDisks(vm) {
			if d.CBTID == "" {
				continue
			}
			d.Seq++
			id := fmt.Sprintf("%s/%d", d.CBTID, d.Seq)
			seqs[d.Key] = d.Seq
			setChangeID(vm, d.Key, id)
			for _, dev := range devs {
				if x, b := flatBacking(dev); b != nil && x.Key == d.Key {
					b.ChangeId = id
				}
			}
		}
		st.snaps[snapRef.Value] = seqs
		if st.serving {
			st.userSnaps[snapRef.Value] = true
		}
	})
	st.save()
}

// guestWrite writes data at off into the disk and records it for CBT.
func (st *state) guestWrite(vm *simulator.VirtualMachine, sel string, off int64, data []byte) (*disk, error) {
	st.epoch.Lock()
	defer st.epoch.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	var d *disk
	var err error
	simulator.Map.WithLock(vm, func() {
		disks := st.vmDisks(vm)
		n, perr := strconv.Atoi(sel)
		for i, x := range disks {
			if perr == nil && (int(x.Key) == n || (n < 1000 && i == n)) {
				d = x
			}
		}
		if d == nil {
			err = fmt.Errorf("VM %q has no disk %q (give a device key or a 0-based index)", vm.Name, sel)
		} else if on := cbtEnabled(vm); on && d.CBTID == "" {
			d.CBTID = newCBTID() // enabled before we saw it (e.g. at creation)
		}
	})
	if err != nil {
		return nil, err
	}
	l := int64(len(data))
	if off < 0 || l == 0 || off%512 != 0 || l%512 != 0 || off+l > d.Capacity {
		return nil, fmt.Errorf("offset %d length %d: must be 512-aligned, non-empty and within capacity %d", off, l, d.Capacity)
	}
	f, err := os.OpenFile(d.Flat, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	if _, err = f.WriteAt(data, off); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if d.CBTID != "" {
		d.Writes = append(d.Writes, write{Seq: d.Seq, O: off, L: l})
	}
	st.save()
	cp := *d
	cp.Writes = nil
	return &cp, nil
}

func merge(xs []extent) []extent {
	sort.Slice(xs, func(i, j int) bool { return xs[i].Off < xs[j].Off })
	var out []extent
	for _, x := range xs {
		if n := len(out); n > 0 && x.Off <= out[n-1].Off+out[n-1].Len {
			if e := x.Off + x.Len; e > out[n-1].Off+out[n-1].Len {
				out[n-1].Len = e - out[n-1].Off
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

// queryChanged implements QueryChangedDiskAreas for one window of the disk.
func (st *state) queryChanged(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, types.BaseMethodFault) {
	vm := getVM(req.This)
	if vm == nil {
		return nil, &types.ManagedObjectNotFound{Obj: req.This}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	var d *disk
	var on bool
	simulator.Map.WithLock(vm, func() {
		on = cbtEnabled(vm)
		for _, x := range st.vmDisks(vm) {
			if x.Key == req.DeviceKey {
				d = x
			}
		}
	})
	if d == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	if !on || d.CBTID == "" {
		return nil, &types.FileFault{File: d.FileName}
	}
	upper := -1 // snapshot's seq; -1 = up to now
	if req.Snapshot != nil {
		snap, _ := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if snap == nil || snap.Vm != req.This {
			return nil, &types.InvalidArgument{InvalidProperty: "snapshot"}
		}
		s, ok := st.snaps[req.Snapshot.Value][d.Key]
		if !ok { // taken while tracking was off, or before the current CBT instance
			return nil, &types.FileFault{File: d.FileName}
		}
		upper = s
	}
	if req.StartOffset < 0 || req.StartOffset >= d.Capacity {
		return nil, &types.InvalidArgument{InvalidProperty: "startOffset"}
	}
	length := st.cfg.pageSize
	if req.StartOffset+length > d.Capacity {
		length = d.Capacity - req.StartOffset
	}
	lo, hi := req.StartOffset, req.StartOffset+length
	var areas []extent
	if req.ChangeId == "*" {
		f, err := os.Open(d.Flat)
		if err != nil {
			return nil, &types.FileFault{File: d.FileName}
		}
		areas, err = allocated(f, lo, hi)
		f.Close()
		if err != nil {
			return nil, &types.FileFault{File: d.FileName}
		}
	} else {
		i := strings.LastIndexByte(req.ChangeId, '/')
		n, err := strconv.Atoi(req.ChangeId[i+1:])
		if i < 0 || err != nil || n < 0 || len(req.ChangeId[:i]) != 47 {
			return nil, &types.InvalidArgument{InvalidProperty: "changeId"}
		}
		if req.ChangeId[:i] != d.CBTID || n > d.Seq || (upper >= 0 && n > upper) {
			return nil, &types.FileFault{File: d.FileName} // stale or foreign changeId
		}
		for _, w := range d.Writes {
			if w.Seq >= n && (upper < 0 || w.Seq < upper) {
				s, e := w.O, w.O+w.L
				if s < lo {
					s = lo
				}
				if e > hi {
					e = hi
				}
				if s < e {
					areas = append(areas, extent{s, e - s})
				}
			}
		}
		areas = merge(areas)
	}
	info := &types.DiskChangeInfo{StartOffset: lo, Length: length}
	for _, a := range areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.Off, Length: a.Len})
	}
	return info, nil
}

type saved struct {
	Disks []*disk     `json:"disks"`
	Snaps []savedSnap `json:"snapshots,omitempty"`
}

// save persists the CBT bookkeeping and the client snapshots (caller holds st.mu, no VM
// lock). Written atomically.
func (st *state) save() {
	var s saved
	for _, d := range st.disks {
		if d.CBTID != "" {
			s.Disks = append(s.Disks, d)
		}
	}
	s.Snaps = st.savedSnaps()
	b, _ := json.Marshal(s)
	p := filepath.Join(st.cfg.stateDir, "cbt.json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err == nil {
		_ = os.Rename(p+".tmp", p)
	}
}

// restore re-arms tracking saved by a previous run for disks the new inventory left
// untracked, then re-creates the clients' snapshots (snapshots.go).
func (st *state) restore(ctx context.Context, c *vim25.Client) {
	s := st.prev
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, old := range s.Disks {
		vm := st.findVM(old.VM)
		if vm == nil {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			for _, d := range st.vmDisks(vm) {
				if d.Key == old.Key && d.FileName == old.FileName && d.CBTID == "" {
					d.CBTID, d.Seq, d.Writes = old.CBTID, old.Seq, old.Writes
					vm.Config.ChangeTrackingEnabled = types.NewBool(true)
					if d.Seq > 0 {
						setChangeID(vm, d.Key, fmt.Sprintf("%s/%d", d.CBTID, d.Seq))
					}
				}
			}
		})
	}
	st.restoreSnaps(ctx, c)
	st.serving = true
	st.save()
}
