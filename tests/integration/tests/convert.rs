//! virt-v2v-in-place on real software (`osm_agent::exec::virt_v2v`): the test bed's
//! two-disk Debian 12 guest (`tests/testbed/up --only guest`, env from
//! $OSM_TESTBED_STATE/env), handed over with its disks in REVERSED order (data disk first,
//! root second, the root on a loop device as attached volumes are), must be converted with
//! the root found on disk 1, and then boot to its login prompt on virtio disks. Also: a
//! stop request kills virt-v2v with its nbdkit and qemu, and a root on LVM is found by its
//! volume group. The appliance runs under TCG (`force_tcg`), as on the bed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use osm_agent::exec::virt_v2v::{self, ConvertError, ConvertSpec, Firmware};
use osm_integration_tests::disk::Loop;

/// One appliance at a time: they are CPU-bound under TCG (the times reported mean
/// something), and the process checks below look for this test process' private folders.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run tests/testbed/up (or tests/testbed/up --only guest) and source $OSM_TESTBED_STATE/env")
    })
}

fn program() -> PathBuf {
    osm_agent::exec::resolve("virt-v2v-in-place")
        .expect("virt-v2v-in-place is not installed: tests/testbed/guest/deps.sh installs virt-v2v")
}

/// Private sparse copies of the bed's read-only two-disk guest: (root, data).
fn guest_copy(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root.raw");
    let data = dir.join("data.raw");
    for (from, to) in [(env("OSM_GUEST2_DISK1"), &root), (env("OSM_GUEST2_DISK2"), &data)] {
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success(), "cp {from}");
        // The cache is 0444; cp keeps the mode, and the conversion writes.
        let st = Command::new("chmod").arg("0600").arg(to).status().unwrap();
        assert!(st.success());
    }
    (root, data)
}

fn spec(dir: &Path, disks: Vec<PathBuf>) -> ConvertSpec {
    ConvertSpec {
        // Escaped in the XML; virt-v2v echoes it back in its log.
        name: "osm test & <two disks> \"rev\" – Zürich".into(),
        memory_mib: 1024,
        vcpus: 1,
        firmware: Firmware::Bios,
        disks,
        virtio_win: None,
        log: dir.join("log/virt-v2v.log"),
        timeout: Duration::from_secs(60 * 60),
        force_tcg: true,
        debug: false,
        cache_dir: None,
    }
}

/// Processes whose command line mentions `needle` (nbdkit serves our files, qemu reads
/// virt-v2v's sockets in its private TMPDIR).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(needle) && !stat.contains(") Z "))
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Our private folders are /tmp/osm-v2v.<pid>.<n>.<x>; none may survive a run.
fn leftover_private_dirs() -> Vec<PathBuf> {
    let prefix = format!("osm-v2v.{}.", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn converts_a_guest_whose_root_is_on_its_second_disk_and_it_boots() {
    let _serial = serial();
    let dir = osm_integration_tests::scratch();
    let (root, data) = guest_copy(dir.path());
    let root_dev = Loop::new(&root);
    let spec = spec(dir.path(), vec![data.clone(), root_dev.dev.clone()]);
    let xml = virt_v2v::domain_xml(&spec);
    assert!(
        xml.contains("<disk type='file'") && xml.contains("<disk type='block'"),
        "{xml}"
    );

    let mut steps: Vec<(Duration, String)> = Vec::new();
    osm_integration_tests::count_full_conversion("convert: root on the second disk");
    let t0 = Instant::now();
    let result = virt_v2v::run(&program(), &spec, &AtomicBool::new(false), &mut |s| {
        eprintln!("[{:>6.1}s] {s}", t0.elapsed().as_secs_f64());
        steps.push((t0.elapsed(), s.to_string()));
    });
    let took = t0.elapsed();
    eprintln!("conversion wall time: {:.1}s", took.as_secs_f64());
    let c = result.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{c:?}");
    assert_eq!(c.root_disk, 1, "{c:?}");
    assert_eq!(c.root_device, "/dev/sdb1");
    assert_eq!((c.firmware.as_str(), c.guest_firmware.as_str()), ("bios", "bios"));
    assert_eq!((c.os_type.as_str(), c.os_distro.as_str()), ("linux", "debian"));
    assert!(c.osinfo.starts_with("debian12"), "{c:?}");
    let names: Vec<&str> = steps.iter().map(|(_, s)| s.as_str()).collect();
    for want in ["Inspecting the source", "Finishing off"] {
        assert!(names.contains(&want), "no step {want:?} in {names:?}");
    }
    assert!(names.iter().any(|s| s.starts_with("Converting ")), "{names:?}");
    let log = std::fs::read_to_string(&spec.log).unwrap();
    assert!(
        log.contains("osm test &amp; &lt;two disks&gt;"),
        "the XML was not the one virt-v2v read"
    );
    let mode = std::fs::metadata(&spec.log).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    assert!(leftover_private_dirs().is_empty(), "{:?}", leftover_private_dirs());
    drop(root_dev);

    // The converted disks, in the VM's boot order now: root first.
    let order = [&data, &root];
    let boot = [order[c.root_disk], order[1 - c.root_disk]];
    let t1 = Instant::now();
    let out = Command::new(env("OSM_BOOTCHECK"))
        .args(boot)
        .args(["--bus", "virtio", "--timeout", "900", "--log"])
        .arg(dir.path().join("boot.log"))
        .output()
        .unwrap();
    eprintln!("boot to login: {:.1}s", t1.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "the converted guest did not boot: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stop_kills_virt_v2v_with_its_nbdkit_and_qemu() {
    let _serial = serial();
    let dir = osm_integration_tests::scratch();
    let (root, data) = guest_copy(dir.path());
    let spec = spec(dir.path(), vec![data, root]);
    let stop = AtomicBool::new(false);
    let mut stopped_at = None;
    let t0 = Instant::now();
    let e = virt_v2v::run(&program(), &spec, &stop, &mut |s| {
        // The appliance (qemu) and the nbdkit servers are up once inspection starts.
        if s.starts_with("Inspecting") {
            let live = processes_mentioning(&dir.path().to_string_lossy());
            assert!(!live.is_empty(), "no nbdkit serving the disks while inspecting");
            stopped_at = Some(Instant::now());
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap_err();
    assert!(matches!(e, ConvertError::Stopped { .. }), "{e}");
    let stopped_at = stopped_at.expect("never reached inspection");
    eprintln!(
        "stopped {:.1}s after the request ({:.1}s into the run)",
        stopped_at.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    let live = processes_mentioning(&dir.path().to_string_lossy());
    assert!(live.is_empty(), "left running: {live:#?}");
    let private = format!("osm-v2v.{}.", std::process::id());
    let live = processes_mentioning(&private);
    assert!(live.is_empty(), "left running: {live:#?}");
    assert!(leftover_private_dirs().is_empty());
}

#[test]
fn an_lvm_root_is_found_by_its_volume_group() {
    let _serial = serial();
    let dir = osm_integration_tests::scratch();
    let disks: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("d{i}.raw"));
            std::fs::File::create(&p).unwrap().set_len(64 << 20).unwrap();
            p
        })
        .collect();
    // disk 0: a plain partition; disk 1: PV of vg0; disk 2: PV of vg1 with the "root".
    let mut gf = Command::new("guestfish");
    gf.args(["--format=raw"]);
    for d in &disks {
        gf.arg("-a").arg(d);
    }
    gf.args([
        "--",
        "run",
        ":",
        "part-disk",
        "/dev/sda",
        "mbr",
        ":",
        "pvcreate",
        "/dev/sdb",
        ":",
        "pvcreate",
        "/dev/sdc",
    ])
    .args([":", "vgcreate", "vg0", "/dev/sdb", ":", "vgcreate", "vg1", "/dev/sdc"])
    .args([
        ":", "lvcreate", "root", "vg1", "16", ":", "lvcreate", "data", "vg0", "16",
    ])
    .env("LIBGUESTFS_BACKEND", "direct")
    .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    let out = gf.output().unwrap();
    assert!(
        out.status.success(),
        "guestfish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = spec(dir.path(), disks);
    let t0 = Instant::now();
    assert_eq!(virt_v2v::root_disk("/dev/vg1/root", &spec).unwrap(), 2);
    eprintln!("LVM lookup: {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(virt_v2v::root_disk("/dev/sda1", &spec).unwrap(), 0);
    let e = virt_v2v::root_disk("/dev/sdd1", &spec).unwrap_err().to_string();
    assert!(e.contains("only 3 disks"), "{e}");
}
