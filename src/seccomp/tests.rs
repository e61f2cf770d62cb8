use super::*;

#[test]
fn every_builtin_filter_compiles() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap_or_else(|e| panic!("{e}"));
        assert!(!prog.is_empty() && prog.len() < 4096, "{}", prog.len());
    }
}

#[test]
fn every_listed_syscall_is_listed_once() {
    for kind in ThreadKind::ALL {
        let mut seen = std::collections::HashSet::new();
        for a in kind.allow_list() {
            assert!(seen.insert(a.nr), "{} lists {} twice", kind.name(), a.name);
        }
    }
}

/// resources/seccomp/x86_64.json must be the built-in lists: the same text,
/// and the same BPF when seccompiler compiles it.
#[test]
fn the_json_file_is_the_builtin_lists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/seccomp/x86_64.json");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text == builtin_json(),
        "{path} differs from the lists in src/seccomp/; write it anew with \
         `cargo run --bin flint-seccompiler -- --print-builtin > resources/seccomp/x86_64.json`"
    );
    let compiled = seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64).unwrap();
    for kind in ThreadKind::ALL {
        assert_eq!(
            compiled[kind.name()],
            compile(kind).unwrap(),
            "{}",
            kind.name()
        );
    }
}

#[test]
fn the_kick_signal_is_the_one_the_lists_allow() {
    assert_eq!(
        crate::vstate::vcpu_control::kick_signal() as u64,
        values::KICK_SIGNAL
    );
}

#[test]
fn kvm_ioctl_numbers_are_the_kernel_ones() {
    assert_eq!(values::KVM_RUN, 0xae80);
    assert_eq!(values::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(values::KVM_SET_REGS, 0x4090_ae82);
    assert_eq!(values::KVM_TRANSLATE, 0xc018_ae85);
    assert_eq!(values::KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
    assert_eq!(values::KVM_IRQ_LINE, 0x4008_ae61);
    assert_eq!(values::KVM_IRQFD, 0x4020_ae76);
    assert_eq!(values::KVM_IOEVENTFD, 0x4040_ae79);
}

fn builtin_map() -> seccompiler::BpfMap {
    ThreadKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), compile(*k).unwrap()))
        .collect()
}

#[test]
fn file_round_trips() {
    let map = builtin_map();
    assert_eq!(decode(&encode(&map)).unwrap(), map);
}

fn load(bytes: &[u8]) -> Result<Filters, Error> {
    let dir = std::env::temp_dir().join(format!("flint-seccomp-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{n}.bpf"));
    std::fs::write(&path, bytes).unwrap();
    let r = Filters::from_file(&path);
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn a_good_file_loads() {
    let f = load(&encode(&builtin_map())).unwrap();
    for kind in ThreadKind::ALL {
        assert_eq!(*f.get(kind).unwrap(), compile(kind).unwrap());
    }
}

#[test]
fn a_truncated_file_is_refused_saying_so() {
    let bytes = encode(&builtin_map());
    for cut in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let e = load(&bytes[..cut]).expect_err("refused").to_string();
        assert!(
            e.contains("seccomp filter file") && e.contains("truncated"),
            "{cut}: {e}"
        );
    }
}

#[test]
fn a_garbled_file_is_refused() {
    let e = load(b"{\"main\": {\"filter\": []}}")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("not a compiled filter file"), "{e}");
    let mut bytes = encode(&builtin_map());
    bytes.extend_from_slice(b"junk");
    let e = load(&bytes).expect_err("refused").to_string();
    assert!(e.contains("garbage after the last filter"), "{e}");
}

#[test]
fn a_file_without_a_thread_kind_is_refused_naming_it() {
    let mut map = builtin_map();
    map.remove("vcpu");
    let e = load(&encode(&map)).expect_err("refused").to_string();
    assert!(e.contains("no filter for the \"vcpu\" threads"), "{e}");
    assert!(e.contains("api, main"), "{e}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = Filters::from_file(Path::new("/nonexistent/f.bpf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent/f.bpf"), "{e}");
}

#[test]
fn the_violation_line_names_thread_and_call() {
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    let mut name = [0u8; NAME_LEN];
    name[..5].copy_from_slice(b"vcpu0");
    violation_line(&name, 41, &mut line);
    assert_eq!(
        std::str::from_utf8(&line.buf[..line.len]).unwrap(),
        "flint: seccomp: thread vcpu0 made a forbidden system call 41 (socket); stopping\n"
    );
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    violation_line(&[0; NAME_LEN], 999, &mut line);
    assert_eq!(
        std::str::from_utf8(&line.buf[..line.len]).unwrap(),
        "flint: seccomp: thread unnamed made a forbidden system call 999; stopping\n"
    );
}
