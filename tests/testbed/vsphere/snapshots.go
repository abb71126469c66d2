package main

// Snapshot persistence. vCenter keeps a VM's snapshots across its own restart; so do we:
// every snapshot a client took (not the inventory's fixed ones, which are rebuilt) is
// saved to cbt.json with its moref value, parent, name, description, creation time and
// the per-disk changeId it was given, and re-created at start-up under the same moref
// value. So QueryChangedDiskAreas against a snapshot or changeId of the previous run
// keeps working, and a client's leftover snapshots stay visible and removable.

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type savedSnap struct {
	VM          string           `json:"vm"`     // VM name
	Ref         string           `json:"moref"`  // e.g. "snapshot-123"
	Parent      string           `json:"parent"` // parent snapshot's moref value, "" = root
	Name        string           `json:"name"`
	Description string           `json:"description"`
	Created     time.Time        `json:"createTime"`
	Quiesced    bool             `json:"quiesced,omitempty"`
	Current     bool             `json:"current,omitempty"`
	ChangeIDs   map[int32]string `json:"changeIds,omitempty"` // disk key -> "<cbt id>/<seq>"
}

// savedSnaps walks every VM's snapshot tree (parents first) and returns the client-taken
// snapshots. Caller holds st.mu.
func (st *state) savedSnaps() []savedSnap {
	var out []savedSnap
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			if vm.Snapshot == nil {
				return
			}
			var cur string
			if vm.Snapshot.CurrentSnapshot != nil {
				cur = vm.Snapshot.CurrentSnapshot.Value
			}
			var walk func(ts []types.VirtualMachineSnapshotTree, parent string)
			walk = func(ts []types.VirtualMachineSnapshotTree, parent string) {
				for _, t := range ts {
					if st.userSnaps[t.Snapshot.Value] {
						s := savedSnap{VM: vm.Name, Ref: t.Snapshot.Value, Parent: parent, Name: t.Name,
							Description: t.Description, Created: t.CreateTime, Quiesced: t.Quiesced,
							Current: t.Snapshot.Value == cur, ChangeIDs: map[int32]string{}}
						for key, seq := range st.snaps[t.Snapshot.Value] {
							if d := st.disks[vm.Self.Value+"/"+strconv.Itoa(int(key))]; d != nil && d.CBTID != "" {
								s.ChangeIDs[key] = fmt.Sprintf("%s/%d", d.CBTID, seq)
							}
						}
						out = append(out, s)
					}
					walk(t.ChildSnapshotList, t.Snapshot.Value)
				}
			}
			walk(vm.Snapshot.RootSnapshotList, "")
		})
	}
	return out
}

// persist saves the bookkeeping after a request that may have removed snapshots.
func (st *state) persist() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.save()
}

func renameInTree(ts []types.VirtualMachineSnapshotTree, from, to types.ManagedObjectReference) {
	for i := range ts {
		if ts[i].Snapshot == from {
			ts[i].Snapshot = to
		}
		renameInTree(ts[i].ChildSnapshotList, from, to)
	}
}

// restoreSnaps re-creates the previous run's client snapshots (after restore() re-armed
// CBT). Caller holds st.mu.
func (st *state) restoreSnaps(ctx context.Context, c *vim25.Client) {
	// New morefs (the re-created snapshots' temporary ones included) must not collide with
	// saved ones: first move the registry's counter (only reachable through Put) past the
	// highest saved number, with throw-away objects of a type of our own.
	maxN := int64(0)
	for _, s := range st.prev.Snaps {
		if i := strings.LastIndexByte(s.Ref, '-'); i >= 0 {
			if n, err := strconv.ParseInt(s.Ref[i+1:], 10, 64); err == nil && n > maxN {
				maxN = n
			}
		}
	}
	for maxN > 0 {
		x := &simulator.VirtualMachineSnapshot{}
		x.Self.Type = "OsmCounterBump"
		simulator.Map.Put(x)
		simulator.Map.Remove(x.Self)
		i := strings.LastIndexByte(x.Self.Value, '-')
		if n, err := strconv.ParseInt(x.Self.Value[i+1:], 10, 64); err != nil || n >= maxN {
			break
		}
	}
	restored := map[string]types.ManagedObjectReference{} // saved moref value -> actual
	var currents []savedSnap
	for _, s := range st.prev.Snaps {
		vm := st.findVM(s.VM)
		if vm == nil {
			log.Printf("snapshot %s (%q): VM %q is gone; dropped", s.Ref, s.Name, s.VM)
			continue
		}
		// Make the parent current so the new snapshot hangs under it (no parent: a root).
		simulator.Map.WithLock(vm, func() {
			if vm.Snapshot == nil {
				return
			}
			if p, ok := restored[s.Parent]; ok {
				vm.Snapshot.CurrentSnapshot = &p
			} else if s.Parent == "" {
				vm.Snapshot.CurrentSnapshot = nil
			} else if simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s.Parent}) != nil {
				p := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s.Parent}
				vm.Snapshot.CurrentSnapshot = &p // an inventory snapshot
			}
		})
		parent := currentSnapshot(vm.Self)
		vmObj := object.NewVirtualMachine(c, vm.Self)
		t, err := vmObj.CreateSnapshot(ctx, s.Name, s.Description, false, s.Quiesced)
		if err == nil {
			err = t.Wait(ctx)
		}
		cur := currentSnapshot(vm.Self)
		if err != nil || cur == nil {
			log.Printf("snapshot %s (%q) of %s: re-create failed: %v", s.Ref, s.Name, s.VM, err)
			continue
		}
		snap := simulator.Map.Get(*cur).(*simulator.VirtualMachineSnapshot)
		want := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s.Ref}
		ref := *cur
		if simulator.Map.Get(want) == nil {
			ref = want
		} else {
			log.Printf("snapshot %s (%q) of %s: moref taken, now %s", s.Ref, s.Name, s.VM, cur.Value)
		}
		seqs := map[int32]int{}
		simulator.Map.WithLock(vm, func() {
			if ref != *cur {
				simulator.Map.Remove(*cur)
				snap.Self = ref
				simulator.Map.Put(snap)
				renameInTree(vm.Snapshot.RootSnapshotList, *cur, ref)
				vm.Snapshot.CurrentSnapshot = &ref
				for i := range vm.Layout.Snapshot {
					if vm.Layout.Snapshot[i].Key == *cur {
						vm.Layout.Snapshot[i].Key = ref
					}
				}
				for i := range vm.LayoutEx.Snapshot {
					if vm.LayoutEx.Snapshot[i].Key == *cur {
						vm.LayoutEx.Snapshot[i].Key = ref
					}
				}
				if parent != nil {
					if ps, ok := simulator.Map.Get(*parent).(*simulator.VirtualMachineSnapshot); ok {
						for i, ch := range ps.ChildSnapshot {
							if ch == *cur {
								ps.ChildSnapshot[i] = ref
							}
						}
					}
				}
			}
			setTreeItem(vm.Snapshot.RootSnapshotList, ref, s.Created)
			// Detach the snapshot's disks and give them the changeIds of the previous run.
			devs := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
			for i, dev := range snap.Config.Hardware.Device {
				devs[i] = dev
				if d, b := flatBacking(dev); b != nil {
					d2, b2 := *d, *b
					b2.ChangeId = ""
					if id, ok := s.ChangeIDs[d.Key]; ok {
						x := st.disks[vm.Self.Value+"/"+strconv.Itoa(int(d.Key))]
						j := strings.LastIndexByte(id, '/')
						if n, err := strconv.Atoi(id[j+1:]); j > 0 && err == nil && x != nil && x.CBTID == id[:j] {
							b2.ChangeId, seqs[d.Key] = id, n
						}
					}
					d2.Backing = &b2
					devs[i] = &d2
				}
			}
			snap.Config.Hardware.Device = devs
		})
		st.snaps[ref.Value] = seqs
		st.userSnaps[ref.Value] = true
		log.Printf("re-created snapshot %s (%q) of %s", ref.Value, s.Name, s.VM)
		restored[s.Ref] = ref
		if s.Current {
			currents = append(currents, s)
		}
	}
	// Current snapshot as it was (else the last re-created one stays current).
	for _, s := range currents {
		if vm := st.findVM(s.VM); vm != nil {
			r := restored[s.Ref]
			simulator.Map.WithLock(vm, func() { vm.Snapshot.CurrentSnapshot = &r })
		}
	}
	if len(restored) > 0 {
		log.Printf("re-created %d snapshot(s) of the previous run", len(restored))
	}
}

func setTreeItem(ts []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference, created time.Time) {
	for i := range ts {
		if ts[i].Snapshot == ref {
			if !created.IsZero() {
				ts[i].CreateTime = created
			}
			return
		}
		setTreeItem(ts[i].ChildSnapshotList, ref, created)
	}
}
