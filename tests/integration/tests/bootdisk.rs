//! The boot disk is the disk holding the boot loader, not the one holding `/` (issue
//! "Nothing lost, nothing crossed", case 14), on the test bed's guest images (GRUB and
//! the ESP installed by the guest's own grub-install):
//! - the detection, on the images in both orders and on a disk built with GRUB in its
//!   MBR next to one holding only a filesystem;
//! - a `skip_conversion` migration of `osm-twin-1` read from local copies of its disks
//!   (`local_disk_path`; the shared bed's disks are not touched) in which disk 1 carries
//!   GRUB: the server's boot index 0 is disk 1's volume.
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use osm_agent::bootdisk::{choose, Choice};
use osm_agent::exec::virt_v2v::Firmware;
use osm_api::JobState;
use osm_integration_tests::migration::*;

fn guest_disks() -> (PathBuf, PathBuf) {
    (env("OSM_GUEST2_DISK1").into(), env("OSM_GUEST2_DISK2").into())
}

/// A disk whose first MiB (MBR boot code and the core.img GRUB embeds after it) is the
/// bed root disk's, with one partition (`/boot`) of its own.
fn grub_disk(dir: &Path, from: &Path) -> PathBuf {
    let p = dir.join("grub-boot.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    let out = Command::new("sfdisk")
        .args(["-q", p.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"start=2048, type=83\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "sfdisk");
    let mut head = vec![0u8; 1 << 20];
    std::fs::File::open(from).unwrap().read_exact_at(&mut head, 0).unwrap();
    f.write_all_at(&head[..440], 0).unwrap(); // boot code; the new partition table stays
    f.write_all_at(&head[512..], 512).unwrap(); // core.img in the MBR gap
    p
}

fn picked(c: &Choice) -> (usize, Option<&str>) {
    (c.disk, c.loader.as_deref())
}

#[test]
fn the_disk_with_grub_or_the_esp_boots_whatever_the_order() {
    let (root, data) = guest_disks();
    let reversed = [data.clone(), root.clone()];
    // skip_conversion takes the root to be on disk 0: here the data disk.
    let bios = choose(&reversed, Firmware::Bios, 0);
    assert_eq!(picked(&bios), (1, Some("GRUB in the MBR (MBR)")), "{bios:?}");
    let uefi = choose(&reversed, Firmware::Uefi, 0);
    assert_eq!(
        picked(&uefi),
        (1, Some("EFI system partition 2 with EFI/BOOT/BOOTX64.EFI")),
        "{uefi:?}"
    );
    for fw in [Firmware::Bios, Firmware::Uefi] {
        assert_eq!(choose(&[root.clone(), data.clone()], fw, 0).disk, 0);
        // Only the data disk (bootable flag, no boot code): the root disk, no loader.
        let none = choose(std::slice::from_ref(&data), fw, 0);
        assert_eq!((none.disk, none.loader), (0, None));
    }
    // GRUB in the MBR with /boot on disk 1, `/` on disk 0 (a disk with a filesystem only).
    let tmp = osm_integration_tests::scratch();
    let boot = grub_disk(tmp.path(), &root);
    let c = choose(&[data.clone(), boot.clone()], Firmware::Bios, 0);
    assert_eq!(picked(&c), (1, Some("GRUB in the MBR (MBR)")), "{c:?}");
    // Both hold a loader: the inspected root disk's wins.
    let both = [boot, root];
    assert_eq!(choose(&both, Firmware::Bios, 1).disk, 1);
    assert_eq!(choose(&both, Firmware::Bios, 0).disk, 0);
}

/// (volume id, boot index) of a server's volumes, from Nova's database (the API does not
/// show boot indexes).
fn boot_indexes(server: &str) -> Vec<(String, String)> {
    let sock = format!("{}/openstack/mysql/mysql.sock", env("OSM_TESTBED_STATE"));
    let query = format!(
        "select volume_id, ifnull(boot_index, 'none') from nova.block_device_mapping \
         where instance_uuid = '{server}' and deleted = 0 and volume_id is not null order by boot_index"
    );
    let out = Command::new("mysql")
        .args(["-N", "-B", "-S", &sock, "-u", "root", "-e", &query])
        .output()
        .unwrap();
    assert!(out.status.success(), "mysql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(v, i)| (v.to_string(), i.to_string()))
        .collect()
}

#[test]
fn a_skip_conversion_migration_boots_from_the_disk_with_grub() {
    let name = "osm-twin-1";
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, name));
    assert_eq!(src.disks.len(), 2);
    // Private copies of its disks; disk 1 gets the bed root disk's GRUB (MBR and core.img).
    let local = tmp.path().join("datastores");
    for (i, d) in src.disks.iter().enumerate() {
        let (ds, rest) = d.datastore_path.trim_start_matches('[').split_once("] ").unwrap();
        let copy = local
            .join(ds)
            .join(format!("{}-flat.vmdk", rest.strip_suffix(".vmdk").unwrap()));
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(flat_file(&d.datastore_path))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        if i == 1 {
            let mut head = vec![0u8; 1 << 20];
            std::fs::File::open(guest_disks().0)
                .unwrap()
                .read_exact_at(&mut head, 0)
                .unwrap();
            f.write_all_at(&head, 0).unwrap();
        } else {
            f.write_all_at(&[0u8; 512], 0).unwrap(); // no boot code on disk 0
        }
    }
    let agent = bed_agent(tmp.path(), "");
    let plan = plan(
        tmp.path(),
        &[name],
        &format!(
            "mode = \"cold\"\nskip_conversion = true\nlocal_disk_path = \"{}\"",
            local.display()
        ),
    );
    let c = cloud();
    let job = migrate(&agent, &plan);
    let done = agent.wait_job(job.id, 600);
    let m = done.migration.clone().unwrap_or_default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(done.state, JobState::Succeeded, "{}\n{}", done.error, agent.stderr());
        assert_eq!(m.volumes.len(), 2);
        let log = agent.stderr();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("boot")).collect();
        let indexes = boot_indexes(&m.server_id);
        assert_eq!(
            indexes,
            vec![(m.volumes[1].clone(), "0".into()), (m.volumes[0].clone(), "1".into())],
            "boot index 0 is disk 1's volume (GRUB), disk 0's comes next; the agent said:\n{}",
            said.join("\n")
        );
        rt.block_on(async {
            assert!(c.get_volume(&m.volumes[1]).await.unwrap().is_bootable());
            assert!(!c.get_volume(&m.volumes[0]).await.unwrap().is_bootable());
        });
        assert!(
            agent
                .stderr()
                .contains("boot disk: disk 1 (GRUB in the MBR (MBR)); the root is on disk 0"),
            "{}",
            agent.stderr()
        );
    }));
    rt.block_on(async {
        remove_migrated(&c, &src.moref, &m.server_id).await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
