package main

// Flat disk files. Mapping: the datastore "[datastore1]" is the local directory
// <state>/ds; the disk "[datastore1] dir/name.vmdk" is a small VMDK descriptor at
// <state>/ds/dir/name.vmdk whose data lives in the raw, sparse <state>/ds/dir/name-flat.vmdk
// (what a VMFS datastore holds for a flat/thin disk). Capacity == flat file size.

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// flatPath maps "[ds] dir/name.vmdk" to the local flat file, or "" if not on dsDir's datastore.
func flatPath(dsName, dsDir, fileName string) string {
	prefix := "[" + dsName + "] "
	if !strings.HasPrefix(fileName, prefix) || !strings.HasSuffix(fileName, ".vmdk") {
		return ""
	}
	rel := path.Clean(strings.TrimPrefix(fileName, prefix))
	if strings.HasPrefix(rel, "../") || rel == ".." {
		return ""
	}
	return filepath.Join(dsDir, strings.TrimSuffix(rel, ".vmdk")+"-flat.vmdk")
}

// stream fills buf with the test bed's deterministic byte stream for seed, starting at
// stream position pos (multiple of 32): block i = SHA-256(le64(seed) || le64(i)).
func stream(seed uint64, pos int64, buf []byte) {
	var in [16]byte
	binary.LittleEndian.PutUint64(in[:8], seed)
	for i := 0; i < len(buf); i += 32 {
		binary.LittleEndian.PutUint64(in[8:], uint64(pos/32)+uint64(i/32))
		sum := sha256.Sum256(in[:])
		copy(buf[i:], sum[:])
	}
}

func nameSeed(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

// contentOffsets: where generated content goes — 1 MiB at 0, cap/4, cap/2 (MiB aligned)
// and the last MiB; `small` writes only 64 KiB at 0 (extra scale-test VMs).
func contentOffsets(capacity int64, small bool) [][2]int64 {
	if small {
		return [][2]int64{{0, 64 << 10}}
	}
	mib := int64(1 << 20)
	return [][2]int64{{0, mib}, {capacity / 4 / mib * mib, mib}, {capacity / 2 / mib * mib, mib}, {capacity - mib, mib}}
}

// prepareFlat gives the flat file its content: a sparse copy of image when set, else the
// deterministic pattern; then sizes it to capacity and writes the descriptor next to it.
func prepareFlat(flat, label, image string, capacity int64, small bool) error {
	if err := os.MkdirAll(filepath.Dir(flat), 0o755); err != nil {
		return err
	}
	if image != "" {
		out, err := exec.Command("cp", "--sparse=always", image, flat).CombinedOutput()
		if err != nil {
			return fmt.Errorf("cp %s: %v: %s", image, err, out)
		}
	} else {
		f, err := os.OpenFile(flat, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		for _, o := range contentOffsets(capacity, small) {
			buf := make([]byte, o[1])
			stream(nameSeed(label), o[0], buf)
			if _, err := f.WriteAt(buf, o[0]); err != nil {
				f.Close()
				return err
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if err := os.Truncate(flat, capacity); err != nil {
		return err
	}
	return writeDescriptor(flat, capacity)
}

func writeDescriptor(flat string, capacity int64) error {
	desc := strings.TrimSuffix(flat, "-flat.vmdk") + ".vmdk"
	text := fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "1"
ddb.virtualHWVersion = "14"
`, capacity/512, filepath.Base(flat))
	return os.WriteFile(desc, []byte(text), 0o644)
}

// imageCapacity: the image size rounded up to 1 MiB (the copy is extended to it).
func imageCapacity(image string) (int64, error) {
	fi, err := os.Stat(image)
	if err != nil {
		return 0, err
	}
	return (fi.Size() + (1<<20 - 1)) >> 20 << 20, nil
}

// allocated lists the data extents of f within [start, end) using SEEK_DATA/SEEK_HOLE.
func allocated(f *os.File, start, end int64) ([]extent, error) {
	const seekData, seekHole = 3, 4
	var out []extent
	pos := start
	for pos < end {
		d, err := f.Seek(pos, seekData)
		if err != nil || d >= end { // ENXIO: no data after pos
			break
		}
		h, err := f.Seek(d, seekHole)
		if err != nil {
			return nil, err
		}
		if h > end {
			h = end
		}
		out = append(out, extent{d, h - d})
		pos = h
	}
	_, _ = f.Seek(0, io.SeekStart)
	return out, nil
}
