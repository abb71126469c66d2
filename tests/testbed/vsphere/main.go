// vcsim-osm: a vCenter simulator for the osm test bed, built on govmomi's simulator
// library (Debian's 0.24.2). Adds what the library lacks: real flat disk files, faithful
// changed-block tracking (QueryChangedDiskAreas, changeIds), a fixed inventory and a
// control endpoint for guest writes. See README.md.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

type config struct {
	listen, cert, key, user, passFile, stateDir string
	dcName, dsName                              string
	extraVMs                                    int
	pageSize                                    int64
	guestImage, guest2Disk1, guest2Disk2        string
	extraTools                                  string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "guest-write" {
		os.Exit(guestWriteCmd(os.Args[2:]))
	}
	var c config
	flag.StringVar(&c.listen, "listen", "127.0.0.1:8989", "listen address (loopback only)")
	flag.StringVar(&c.cert, "cert", "", "TLS certificate (PEM)")
	flag.StringVar(&c.key, "key", "", "TLS private key (PEM)")
	flag.StringVar(&c.user, "user", "osm@vsphere.local", "login user name")
	flag.StringVar(&c.passFile, "password-file", "", "file holding the login password")
	flag.StringVar(&c.stateDir, "state", "", "state directory (datastore files, CBT bookkeeping)")
	flag.StringVar(&c.dsName, "datastore", "datastore1", "datastore name")
	flag.IntVar(&c.extraVMs, "extra-vms", 0, "number of extra plain VMs (scale tests)")
	flag.StringVar(&c.extraTools, "extra-vms-tools", "notRunning", "VMware Tools status of the extra VMs (running: they can be migrated warm or shut down)")
	flag.Int64Var(&c.pageSize, "qcda-page", 256<<20, "QueryChangedDiskAreas window in bytes")
	flag.StringVar(&c.guestImage, "guest-image", os.Getenv("OSM_GUEST_IMAGE"), "raw image for osm-linux-1's disk")
	flag.StringVar(&c.guest2Disk1, "guest2-disk1", os.Getenv("OSM_GUEST2_DISK1"), "raw image for osm-linux-2disk disk 1")
	flag.StringVar(&c.guest2Disk2, "guest2-disk2", os.Getenv("OSM_GUEST2_DISK2"), "raw image for osm-linux-2disk disk 2")
	flag.Parse()
	c.dcName = "DC0" // the simulator model's name for the first datacenter
	if c.cert == "" || c.key == "" || c.passFile == "" || c.stateDir == "" {
		log.Fatal("-cert, -key, -password-file and -state are required")
	}
	if host, _, err := net.SplitHostPort(c.listen); err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("refusing to listen on %q: loopback only", c.listen)
	}
	pw, err := os.ReadFile(c.passFile)
	if err != nil {
		log.Fatal(err)
	}
	password := strings.TrimSpace(string(pw))

	m := simulator.VPX()
	m.Datastore, m.Machine, m.Portgroup, m.ClusterHost, m.Host = 0, 0, 2, 2, 0
	m.Autostart = false
	if err := m.Create(); err != nil {
		log.Fatal(err)
	}
	// NewServer builds the HTTP mux; its own listener (ephemeral, plain HTTP) is closed
	// again and the mux is served behind our TLS front on c.listen.
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(c.user, password)}
	inner := m.Service.NewServer()
	inner.Server.Close()
	simulator.Map.SessionManager().ServiceHostName = c.listen

	ctx := context.Background()
	client, err := vim25.NewClient(ctx, m.Service) // in-process client (privileged)
	if err != nil {
		log.Fatal(err)
	}
	st := newState(c)
	if err := buildInventory(ctx, client, st); err != nil {
		log.Fatalf("inventory: %v", err)
	}
	st.restore(ctx, client)

	mux := http.NewServeMux()
	mux.Handle("/sdk", &sdkFront{st: st, inner: m.Service.ServeMux})
	mux.Handle("/osm-testbed/", &ctl{st: st, user: c.user, password: password})
	mux.Handle("/", m.Service.ServeMux)
	srv := &http.Server{Addr: c.listen, Handler: mux,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := srv.ServeTLS(ln, c.cert, c.key); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	// A marker the up script waits for: inventory complete, endpoint serving.
	_ = os.WriteFile(filepath.Join(c.stateDir, "ready"), []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o600)
	log.Printf("serving https://%s/sdk (datastore %s at %s, %d VMs)", c.listen, c.dsName, st.dsDir, len(st.vmNames()))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = os.Remove(filepath.Join(c.stateDir, "ready"))
	_ = srv.Close()
}
