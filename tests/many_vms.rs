//! Twenty microVMs at once on this host, each with a disk of its own. The
//! guest is resources/tiny/disk.S, a virtio-block driver of a few dozen
//! instructions: it reads its disk's sector 0, writes it to sector 1 and
//! resets (flint exits 0). The host gave every disk a sector 0 of its own;
//! afterwards each disk must hold its own sector 0 in sector 1 and be
//! otherwise untouched: no VM's I/O reached another's disk. Half of them
//! serve their disk with the sync engine, half with io_uring. (tests/hostile.rs
//! runs Linux VMs side by side with guest user space, in the lab.)

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{pattern, spawn, tiny};

const VMS: usize = 20;
const DISK: usize = 1 << 20;

struct Images(Vec<PathBuf>);

impl Drop for Images {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn twenty_vms_at_once_each_copy_a_sector_of_only_their_own_disk() {
    let mut images = Images(Vec::new());
    let mut sectors = Vec::new();
    for i in 0..VMS {
        let p = std::env::temp_dir().join(format!("flint-many-{}-{i}.img", std::process::id()));
        let mut data = vec![0u8; DISK];
        let mut first = pattern(512, 1000 + i as u64);
        first[..16].copy_from_slice(
            format!("flint-vm-{i:02}-disk")
                .as_bytes()
                .get(..16)
                .unwrap(),
        );
        data[..512].copy_from_slice(&first);
        std::fs::write(&p, &data).unwrap();
        images.0.push(p);
        sectors.push(first);
    }
    let guest = tiny("disk");
    let t0 = Instant::now();
    let mut vms: Vec<_> = images
        .0
        .iter()
        .enumerate()
        .map(|(i, img)| {
            // Every other VM's disk on the io_uring engine.
            let engine = if i % 2 == 0 { "sync" } else { "async" };
            spawn(&[
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "32",
                "--drive",
                &format!("path={},engine={engine}", img.display()),
            ])
        })
        .collect();
    // All twenty are started before any is waited for.
    let started = t0.elapsed();
    for (i, vm) in vms.iter_mut().enumerate() {
        let status = vm.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "VM {i}:\n{}", vm.output());
    }
    eprintln!(
        "{VMS} VMs started within {:.1} ms, all done in {:.1} ms",
        started.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );
    for (i, img) in images.0.iter().enumerate() {
        let data = std::fs::read(img).unwrap();
        assert_eq!(data.len(), DISK);
        assert_eq!(&data[..512], &sectors[i][..], "disk {i}: sector 0 changed");
        if data[512..1024] != sectors[i][..] {
            let whose = sectors.iter().position(|s| s[..] == data[512..1024]);
            panic!("disk {i}: sector 1 is not its own sector 0 (it is VM {whose:?}'s)");
        }
        assert!(
            data[1024..].iter().all(|&b| b == 0),
            "disk {i}: written beyond sector 1"
        );
    }
}
