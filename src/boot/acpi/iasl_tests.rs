//! The tables as ACPICA's disassembler (`iasl -d`, Debian's acpica-tools)
//! reads them: an independent check of the encoding. Skipped, with a
//! message, only where iasl is not installed (tests/run-all.sh installs it).

use std::path::PathBuf;
use std::process::Command;

use super::tests::{two_device_tables, TWO_DEVICES};

fn have_iasl() -> bool {
    let found = Command::new("iasl").arg("-v").output().is_ok();
    if !found {
        eprintln!("skipping the iasl check: iasl is not installed (apt-get install acpica-tools)");
    }
    found
}

/// Disassemble `table` with `iasl -d`; returns the .dsl text. Fails the
/// test on any error iasl reports.
fn disassemble(name: &str, table: &[u8]) -> String {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("flint-iasl-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, table).unwrap();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&dat)
        .current_dir(&dir)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl")));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
    assert!(
        !log.to_lowercase().contains("error") || log.contains(" 0 Errors"),
        "iasl reported errors for {name}:\n{log}"
    );
    let dsl = dsl.unwrap_or_else(|e| panic!("no {name}.dsl from iasl ({e}):\n{log}"));
    assert!(
        !dsl.contains("**** ACPI table terminates in the middle of a data structure!")
            && !dsl.contains("Invalid"),
        "{name}:\n{dsl}"
    );
    dsl
}

/// The first line of `dsl` that contains `field`.
fn line<'a>(dsl: &'a str, field: &str) -> &'a str {
    dsl.lines()
        .find(|l| l.contains(field))
        .unwrap_or_else(|| panic!("no {field:?} in:\n{dsl}"))
}

#[test]
fn iasl_reads_the_dsdt() {
    if !have_iasl() {
        return;
    }
    let dsl = disassemble("dsdt", &two_device_tables().dsdt.1);
    for want in [
        "Scope (\\_SB)",
        "LNRO0005",
        "0xC0001000",
        "0xC0002000",
        "Memory32Fixed (ReadWrite,",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000005,",
        "0x00000006,",
        "PNP0501",
        "IO (Decode16,",
        "0x03F8,",
        "IRQNoFlags ()",
        "{4}",
        "PNP0303",
        "0x0060,",
        "0x0064,",
        "{1}",
        "_S5",
    ] {
        assert!(dsl.contains(want), "no {want:?} in the DSDT:\n{dsl}");
    }
    assert_eq!(dsl.matches("LNRO0005").count(), TWO_DEVICES.len());
}

#[test]
fn iasl_reads_the_fadt() {
    if !have_iasl() {
        return;
    }
    let tables = two_device_tables();
    let dsl = disassemble("facp", &tables.fadt.1);
    assert!(line(&dsl, "Signature").contains("FACP"), "{dsl}");
    assert!(line(&dsl, "Revision").ends_with(": 06"), "{dsl}");
    assert!(
        line(&dsl, "Hardware Reduced (V5)").ends_with(": 1"),
        "{dsl}"
    );
    assert!(
        line(&dsl, "Reset Register Supported").ends_with(": 1"),
        "{dsl}"
    );
    assert!(line(&dsl, "8042 Present").ends_with(": 1"), "{dsl}");
    assert!(
        line(&dsl, "Value to cause reset").ends_with(": 01"),
        "{dsl}"
    );
    assert!(line(&dsl, "PM1A Control Block Address").ends_with(": 00000000"));
    for (reg, port) in [
        ("Reset Register :", "0602"),
        ("Sleep Control Register :", "0600"),
        ("Sleep Status Register :", "0601"),
    ] {
        let at = dsl.find(reg).unwrap_or_else(|| panic!("no {reg}:\n{dsl}"));
        let block = &dsl[at..];
        assert!(line(block, "Space ID").contains("[SystemIO]"), "{reg}");
        assert!(line(block, "Bit Width").ends_with(": 08"), "{reg}");
        assert!(line(block, "Address :").ends_with(port), "{reg}");
    }
    let x_dsdt = format!("{:016X}", tables.dsdt.0);
    let at = dsl.find("FADT Minor Revision").unwrap();
    assert!(line(&dsl[at..], "DSDT Address").ends_with(&x_dsdt), "{dsl}");
}

#[test]
fn iasl_reads_the_madt() {
    if !have_iasl() {
        return;
    }
    let dsl = disassemble("apic", &two_device_tables().madt.1);
    assert!(line(&dsl, "Signature").contains("APIC"), "{dsl}");
    assert_eq!(
        dsl.matches("Subtable Type : 00 [Processor Local APIC]")
            .count(),
        2
    );
    assert_eq!(dsl.matches("Subtable Type : 01 [I/O APIC]").count(), 1);
    assert_eq!(
        dsl.matches("Subtable Type : 04 [Local APIC NMI]").count(),
        1
    );
    assert!(
        line(&dsl, "Local Apic Address").ends_with(": FEE00000"),
        "{dsl}"
    );
    assert!(line(&dsl, "PC-AT Compatibility").ends_with(": 1"), "{dsl}");
    assert!(dsl.contains("Local Apic ID : 01"), "{dsl}");
    assert!(
        line(&dsl, "I/O Apic ID").ends_with(": 02"),
        "the MP table's id: {dsl}"
    );
    assert!(line(&dsl, "Address : FEC").ends_with(": FEC00000"), "{dsl}");
    assert!(
        line(&dsl, "Interrupt Input LINT").ends_with(": 01"),
        "{dsl}"
    );
}
