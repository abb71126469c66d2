//! Disk images built with the host's own tools (sfdisk, sgdisk, mkfs.vfat, mtools) as a
//! guest's installer would lay them out. Real GRUB boot code is in the integration test
//! on the test bed's guest images (tests/integration/tests/bootdisk.rs).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str], input: Option<&str>) {
    let mut c = Command::new(program);
    c.args(args).env("MTOOLS_SKIP_CHECK", "1").stdout(Stdio::null());
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (these tests need sfdisk, sgdisk, mkfs.vfat and mtools)"));
    if let Some(text) = input {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blank(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(mib * MIB).unwrap();
    p
}

/// An MBR disk from an sfdisk script.
fn mbr(dir: &Path, name: &str, mib: u64, script: &str) -> PathBuf {
    let p = blank(dir, name, mib);
    run("sfdisk", &["-q", p.to_str().unwrap()], Some(script));
    p
}

/// A GPT disk from sgdisk arguments (`-n 1:2048:+8M -t 1:ef00` …).
fn gpt(dir: &Path, name: &str, mib: u64, args: &[&str]) -> PathBuf {
    let p = blank(dir, name, mib);
    let mut a = args.to_vec();
    a.push(p.to_str().unwrap());
    run("sgdisk", &a, None);
    p
}

/// Boot code in sector 0 that is not GRUB's (a jump and some instructions, as any
/// boot sector has), the partition table kept.
fn other_boot_code(disk: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&[0xEB, 0x5E, 0x90, 0xFA, 0x31, 0xC0, 0x8E, 0xD0], 0)
        .unwrap();
}

/// A FAT filesystem of `bits` at 1 MiB (sector 2048) of `disk`, holding `files`
/// (directories are made as needed).
fn fat_at_1mib(disk: &Path, size_mib: u64, bits: &str, files: &[&str]) {
    let d = disk.to_str().unwrap();
    let kib = (size_mib * 1024).to_string();
    // FAT32 needs 65525 clusters: one sector each; mkfs picks the size for FAT12/16.
    let spc: &[&str] = if bits == "32" { &["-s", "1"] } else { &[] };
    let args = [&["-F", bits], spc, &["--offset", "2048", d, &kib]].concat();
    run("mkfs.vfat", &args, None);
    let image = format!("{d}@@{MIB}");
    let content = disk.with_extension("content");
    std::fs::write(&content, b"MZ not really a PE file").unwrap();
    for f in files {
        let mut dir = String::new();
        let parts: Vec<&str> = f.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir = format!("{dir}/{part}");
            let _ = Command::new("mmd")
                .args(["-i", &image, &format!("::{dir}")])
                .env("MTOOLS_SKIP_CHECK", "1")
                .stderr(Stdio::null())
                .status();
        }
        run(
            "mcopy",
            &["-i", &image, content.to_str().unwrap(), &format!("::/{f}")],
            None,
        );
    }
}

fn uefi_disk(dir: &Path, name: &str, bits: &str, files: &[&str]) -> PathBuf {
    let p = gpt(
        dir,
        name,
        64,
        &["-n", "1:2048:+40M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300"],
    );
    fat_at_1mib(&p, 40, bits, files);
    p
}

fn bios(p: &Path) -> Option<String> {
    loader_on(p, Firmware::Bios).unwrap()
}

fn uefi(p: &Path) -> Option<String> {
    loader_on(p, Firmware::Uefi).unwrap()
}

#[test]
fn a_linux_data_disk_has_no_bios_loader_even_when_flagged_bootable() {
    let t = tempfile::tempdir().unwrap();
    // sfdisk writes no boot code; the bed's data disks carry the bootable flag all the same.
    let p = mbr(t.path(), "data.raw", 16, "start=2048, type=83, bootable\n");
    assert_eq!(bios(&p), None);
    assert_eq!(uefi(&p), None);
}

#[test]
fn bios_boot_code_counts_with_an_active_partition_or_a_bios_boot_partition() {
    let t = tempfile::tempdir().unwrap();
    // Windows writes its MBR code to every disk it initializes: without an active
    // partition that is a data disk.
    let data = mbr(t.path(), "windows-data.raw", 16, "start=2048, type=7\n");
    other_boot_code(&data);
    assert_eq!(bios(&data), None);
    let system = mbr(t.path(), "windows-system.raw", 16, "start=2048, type=7, bootable\n");
    other_boot_code(&system);
    assert_eq!(
        bios(&system).as_deref(),
        Some("boot code in the MBR and active partition 1 (MBR)")
    );
    // GRUB on a GPT disk: protective MBR with boot code, core.img in an EF02 partition.
    let grub_gpt = gpt(
        t.path(),
        "gpt.raw",
        16,
        &["-n", "1:2048:+1M", "-t", "1:ef02", "-n", "2:0:0"],
    );
    assert_eq!(bios(&grub_gpt), None, "no code in the protective MBR yet");
    other_boot_code(&grub_gpt);
    assert_eq!(
        bios(&grub_gpt).as_deref(),
        Some("boot code in the MBR and BIOS boot partition 1")
    );
    assert_eq!(uefi(&grub_gpt), None, "BIOS code is no UEFI loader");
}

#[test]
fn an_esp_counts_only_with_a_loader_in_its_fat() {
    let t = tempfile::tempdir().unwrap();
    for bits in ["16", "32"] {
        let removable = uefi_disk(
            t.path(),
            &format!("removable{bits}.raw"),
            bits,
            &["EFI/BOOT/BOOTX64.EFI"],
        );
        assert_eq!(
            uefi(&removable).as_deref(),
            Some("EFI system partition 1 with EFI/BOOT/BOOTX64.EFI"),
            "FAT{bits}"
        );
        assert_eq!(bios(&removable), None);
    }
    let vendor = uefi_disk(
        t.path(),
        "vendor.raw",
        "32",
        &["EFI/debian/grubx64.efi", "EFI/debian/grub.cfg"],
    );
    assert_eq!(
        uefi(&vendor).as_deref(),
        Some("EFI system partition 1 with EFI/DEBIAN/GRUBX64.EFI")
    );
    let windows = uefi_disk(t.path(), "windows.raw", "16", &["EFI/Microsoft/Boot/bootmgfw.efi"]);
    assert_eq!(
        uefi(&windows).as_deref(),
        Some("EFI system partition 1 with EFI/MICROS~1/BOOT/BOOTMGFW.EFI")
    );
    let empty = uefi_disk(t.path(), "empty.raw", "16", &["EFI/debian/grub.cfg", "README.TXT"]);
    assert_eq!(uefi(&empty), None, "an ESP without a loader");
    let unformatted = gpt(t.path(), "unformatted.raw", 16, &["-n", "1:2048:+8M", "-t", "1:ef00"]);
    assert_eq!(uefi(&unformatted), None, "an ESP that is not FAT");
    // A FAT with a loader in a partition that is not an ESP does not count either.
    let basic = gpt(t.path(), "basic.raw", 64, &["-n", "1:2048:+40M", "-t", "1:0700"]);
    fat_at_1mib(&basic, 40, "32", &["EFI/BOOT/BOOTX64.EFI"]);
    assert_eq!(uefi(&basic), None);
}

#[test]
fn an_mbr_esp_of_type_ef_counts_too() {
    let t = tempfile::tempdir().unwrap();
    // FAT12 as well: a small ESP.
    let p = mbr(
        t.path(),
        "mbr-esp.raw",
        16,
        "start=2048, size=4M, type=ef\nstart=10240, type=83\n",
    );
    fat_at_1mib(&p, 4, "12", &["EFI/BOOT/BOOTX64.EFI"]);
    assert_eq!(
        uefi(&p).as_deref(),
        Some("EFI system partition 1 with EFI/BOOT/BOOTX64.EFI")
    );
}

#[test]
fn the_disk_with_the_loader_boots_not_the_root_disk() {
    let t = tempfile::tempdir().unwrap();
    // UEFI guest: disk 0 holds `/` only, disk 1 the ESP.
    let root = gpt(t.path(), "root.raw", 16, &["-n", "1:2048:0", "-t", "1:8300"]);
    let esp = uefi_disk(t.path(), "esp.raw", "32", &["EFI/BOOT/BOOTX64.EFI"]);
    let c = choose(&[root.clone(), esp.clone()], Firmware::Uefi, 0);
    assert_eq!((c.disk, c.candidates.clone()), (1, vec![1]), "{c:?}");
    // BIOS guest: disk 1 has boot code and the active /boot partition.
    let boot = mbr(t.path(), "boot.raw", 16, "start=2048, type=83, bootable\n");
    other_boot_code(&boot);
    let c = choose(&[root.clone(), boot.clone()], Firmware::Bios, 0);
    assert_eq!(c.disk, 1, "{c:?}");
    // The firmware decides which loader counts.
    assert_eq!(choose(&[boot.clone(), esp.clone()], Firmware::Uefi, 0).disk, 1);
    assert_eq!(choose(&[esp, boot], Firmware::Bios, 0).disk, 1);
}

#[test]
fn the_root_disk_wins_among_several_and_boots_when_none_qualifies() {
    let t = tempfile::tempdir().unwrap();
    let a = uefi_disk(t.path(), "a.raw", "16", &["EFI/BOOT/BOOTX64.EFI"]);
    let b = uefi_disk(t.path(), "b.raw", "16", &["EFI/BOOT/BOOTX64.EFI"]);
    let data = mbr(t.path(), "data.raw", 16, "start=2048, type=83\n");
    let disks = [data.clone(), a, b];
    assert_eq!(choose(&disks, Firmware::Uefi, 2).disk, 2, "the root disk has one");
    let c = choose(&disks, Firmware::Uefi, 0);
    assert_eq!((c.disk, c.candidates), (1, vec![1, 2]), "else the first");
    let none = [data.clone(), blank(t.path(), "blank.raw", 1)];
    let c = choose(&none, Firmware::Bios, 1);
    assert_eq!(
        (c.disk, c.loader, c.candidates),
        (1, None, vec![]),
        "the root disk by default"
    );
    // An unreadable disk is skipped; a root index past the end is clamped.
    let c = choose(&[t.path().join("gone.raw"), data], Firmware::Bios, 7);
    assert_eq!((c.disk, c.loader), (1, None));
}
