package main

// Control endpoint (HTTP basic auth with the vSphere credentials):
//   GET  /osm-testbed/disks        -> [{vm, moref, key, index, fileName, flat, capacity, changeTracking, changeId}]
//   POST /osm-testbed/guest-write  {"vm": name|moref, "disk": key|index, "offset": N,
//        "length": N, "seed": N (optional) | "data": base64 (optional)}
//        -> {vm, key, fileName, flat, offset, length, sha256, tracked}
// Without data the bytes are stream(seed, 0, length) (see disks.go); seed defaults to random.
// Also the `vcsim-osm guest-write VM DISK OFFSET LENGTH [--seed N]` client.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
)

type ctl struct {
	st             *state
	user, password string
}

type writeReq struct {
	VM     string          `json:"vm"`
	Disk   json.RawMessage `json:"disk"`
	Offset int64           `json:"offset"`
	Length int64           `json:"length"`
	Seed   *uint64         `json:"seed"`
	Data   []byte          `json:"data"`
}

func (c *ctl) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(c.user)) != 1 ||
		subtle.ConstantTimeCompare([]byte(p), []byte(c.password)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="osm-testbed"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	switch {
	case r.URL.Path == "/osm-testbed/disks" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, c.st.listDisks())
	case r.URL.Path == "/osm-testbed/guest-write" && r.Method == http.MethodPost:
		var req writeReq
		if err := json.NewDecoder(io.LimitReader(r.Body, 512<<20)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := c.st.handleWrite(&req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, res)
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (st *state) handleWrite(req *writeReq) (map[string]interface{}, error) {
	vm := st.findVM(req.VM)
	if vm == nil {
		return nil, fmt.Errorf("no VM %q", req.VM)
	}
	sel := strings.Trim(string(req.Disk), `"`)
	data := req.Data
	if data == nil {
		if req.Length <= 0 || req.Length > 256<<20 {
			return nil, fmt.Errorf("length must be in (0, 256 MiB]")
		}
		if req.Seed == nil {
			var b [8]byte
			_, _ = rand.Read(b[:])
			s := binary.LittleEndian.Uint64(b[:])
			req.Seed = &s
		}
		data = make([]byte, req.Length)
		stream(*req.Seed, 0, data)
	} else if req.Length != 0 && req.Length != int64(len(data)) {
		return nil, fmt.Errorf("length %d != len(data) %d", req.Length, len(data))
	}
	d, err := st.guestWrite(vm, sel, req.Offset, data)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	res := map[string]interface{}{"vm": d.VM, "key": d.Key, "fileName": d.FileName, "flat": d.Flat,
		"offset": req.Offset, "length": len(data), "sha256": hex.EncodeToString(sum[:]), "tracked": d.CBTID != ""}
	if req.Seed != nil {
		res["seed"] = *req.Seed
	}
	return res, nil
}

func (st *state) listDisks() []map[string]interface{} {
	out := []map[string]interface{}{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		st.mu.Lock()
		simulator.Map.WithLock(vm, func() {
			for i, d := range st.vmDisks(vm) {
				changeID := ""
				for _, dev := range vm.Config.Hardware.Device {
					if x, b := flatBacking(dev); b != nil && x.Key == d.Key {
						changeID = b.ChangeId
					}
				}
				out = append(out, map[string]interface{}{"vm": vm.Name, "moref": vm.Self.Value,
					"key": d.Key, "index": i, "fileName": d.FileName, "flat": d.Flat,
					"capacity": d.Capacity, "changeTracking": cbtEnabled(vm), "changeId": changeID})
			}
		})
		st.mu.Unlock()
	}
	return out
}

// parseSize accepts a byte count with an optional K/M/G (binary) suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 0, 64)
	return n * mult, err
}

// guestWriteCmd is the CLI client of /osm-testbed/guest-write; reads OSM_VC_* from the env.
func guestWriteCmd(args []string) int {
	var pos []string
	var seed *uint64
	for i := 0; i < len(args); i++ {
		if args[i] == "--seed" && i+1 < len(args) {
			s, err := strconv.ParseUint(args[i+1], 0, 64)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bad --seed:", err)
				return 2
			}
			seed = &s
			i++
			continue
		}
		pos = append(pos, args[i])
	}
	if len(pos) != 4 {
		fmt.Fprintln(os.Stderr, "usage: guest-write VM_NAME DISK_KEY_OR_INDEX OFFSET LENGTH [--seed N]")
		return 2
	}
	off, err1 := parseSize(pos[2])
	length, err2 := parseSize(pos[3])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "bad OFFSET or LENGTH")
		return 2
	}
	disk, _ := json.Marshal(pos[1])
	body, _ := json.Marshal(writeReq{VM: pos[0], Disk: disk, Offset: off, Length: length, Seed: seed})
	pw, err := os.ReadFile(os.Getenv("OSM_VC_PASSWORD_FILE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "OSM_VC_PASSWORD_FILE:", err)
		return 2
	}
	pool := x509.NewCertPool()
	if ca, err := os.ReadFile(os.Getenv("OSM_VC_CA_FILE")); err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, strings.TrimSuffix(os.Getenv("OSM_VC_CTL_URL"), "/")+"/guest-write", bytes.NewReader(body))
	req.SetBasicAuth(os.Getenv("OSM_VC_USER"), strings.TrimSpace(string(pw)))
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	os.Stdout.Write(out)
	if res.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
