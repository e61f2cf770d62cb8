//! Runs the boot-time benchmark once (`bench/boot-vs-container DIR --quick`)
//! and checks what it writes: a Markdown table whose every cell is a number
//! or an explicit reason, a CSV whose every row parses, and a PNG plot.
//!
//! Slow: two flint boots, a QEMU attempt, a container and a host process
//! (minutes on a host whose KVM emulates guest kernel code).

use std::path::{Path, PathBuf};
use std::process::Command;

const CSV_HEADER: [&str; 7] = [
    "system", "variant", "run", "metric", "unit", "value", "reason",
];
/// The first two columns of every table in results.md are labels.
const LABEL_COLUMNS: usize = 2;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let mut parts = s.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A cell that gives a reason instead of a number: `n/a: <some words>`.
fn is_reason(s: &str) -> bool {
    s.strip_prefix("n/a: ")
        .is_some_and(|r| r.trim().len() >= 8 && r.chars().any(|c| c.is_alphabetic()))
}

/// Split a Markdown table row into its cells (`\|` is an escaped pipe).
fn md_cells(line: &str) -> Vec<String> {
    let inner = line
        .trim()
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'));
    let inner = inner.unwrap_or_else(|| panic!("not a table row: {line}"));
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The tables of a Markdown document: each a header and its data rows.
fn md_tables(md: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut tables = Vec::new();
    let mut lines = md.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with('|') {
            continue;
        }
        let header = md_cells(line);
        let sep = lines
            .next()
            .unwrap_or_else(|| panic!("table without separator: {line}"));
        let sep_cells = md_cells(sep);
        assert!(
            sep_cells.len() == header.len()
                && sep_cells
                    .iter()
                    .all(|c| c.trim_matches(['-', ':']).is_empty() && !c.is_empty()),
            "bad separator row under {line}: {sep}"
        );
        let mut rows = Vec::new();
        while lines
            .peek()
            .is_some_and(|l| l.trim_start().starts_with('|'))
        {
            rows.push(md_cells(lines.next().unwrap()));
        }
        tables.push((header, rows));
    }
    tables
}

/// RFC 4180 CSV (quoted fields may hold commas, quotes and newlines).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    assert!(!quoted, "CSV ends inside a quoted field");
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn check_results_md(path: &Path) {
    let md = std::fs::read_to_string(path).expect("read results.md");
    let tables = md_tables(&md);
    assert!(
        tables.len() >= 3,
        "expected several tables in results.md:\n{md}"
    );
    let mut numbers = 0;
    for (header, rows) in &tables {
        assert!(
            header.len() > LABEL_COLUMNS,
            "table with no value column: {header:?}"
        );
        assert!(
            header.iter().all(|h| !h.is_empty()),
            "empty header cell: {header:?}"
        );
        assert!(!rows.is_empty(), "table without rows: {header:?}");
        for row in rows {
            assert_eq!(
                row.len(),
                header.len(),
                "row {row:?} does not match header {header:?}"
            );
            for label in &row[..LABEL_COLUMNS] {
                assert!(!label.is_empty(), "empty label cell in {row:?}");
            }
            for (cell, col) in row[LABEL_COLUMNS..].iter().zip(&header[LABEL_COLUMNS..]) {
                assert!(
                    is_number(cell) || is_reason(cell),
                    "cell in column {col:?} of {row:?} is neither a number nor an `n/a: reason`: {cell:?}"
                );
                numbers += usize::from(is_number(cell));
            }
        }
    }
    assert!(
        numbers > 0,
        "no measured number at all in results.md:\n{md}"
    );
    for system in [
        "flint (initramfs)",
        "flint (root disk)",
        "container",
        "host process",
        "QEMU microvm",
    ] {
        assert!(
            md.contains(&format!("| {system}")),
            "no row for {system} in results.md"
        );
    }
    // flint's own phases come from flint itself and are reached on any host.
    let phases = &tables
        .iter()
        .find(|(h, _)| h.get(1).map(String::as_str) == Some("phase"))
        .expect("no table of flint's phases")
        .1;
    for variant in ["flint (initramfs)", "flint (root disk)"] {
        for phase in ["config-parsed", "vm-built", "first-kvm-run"] {
            let row = phases
                .iter()
                .find(|r| r[0] == variant && r[1] == phase)
                .unwrap_or_else(|| panic!("no {phase} row for {variant}"));
            assert!(
                row[2..].iter().all(|c| is_number(c)),
                "{variant} {phase} not measured: {row:?}"
            );
        }
    }
}

fn check_runs_csv(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read runs.csv");
    let rows = parse_csv(&text);
    assert!(rows.len() > 1, "runs.csv has no data rows");
    assert_eq!(rows[0], CSV_HEADER, "runs.csv header");
    let col = |name: &str| CSV_HEADER.iter().position(|h| *h == name).unwrap();
    let mut systems = std::collections::BTreeSet::new();
    for (n, row) in rows.iter().enumerate().skip(1) {
        assert_eq!(
            row.len(),
            CSV_HEADER.len(),
            "runs.csv line {}: {row:?}",
            n + 1
        );
        let (value, reason) = (&row[col("value")], &row[col("reason")]);
        if value.is_empty() {
            assert!(
                reason.trim().len() >= 8,
                "runs.csv line {}: empty value without a reason: {row:?}",
                n + 1
            );
        } else {
            assert!(
                value.parse::<f64>().is_ok_and(f64::is_finite),
                "runs.csv line {}: value {value:?} is not a number",
                n + 1
            );
            assert!(
                reason.is_empty(),
                "runs.csv line {}: a value and a reason: {row:?}",
                n + 1
            );
        }
        assert_eq!(row[col("run")], "1", "--quick makes one run: {row:?}");
        assert!(
            !row[col("metric")].is_empty() && !row[col("unit")].is_empty(),
            "{row:?}"
        );
        systems.insert(row[col("system")].clone());
    }
    let want: std::collections::BTreeSet<String> = ["container", "flint", "process", "qemu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(systems, want, "systems in runs.csv");
}

#[test]
fn quick_benchmark_writes_table_csv_and_plot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir =
        TempDir(std::env::temp_dir().join(format!("flint-bench-quick-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let out = Command::new(root.join("bench/boot-vs-container"))
        .arg(&dir.0)
        .arg("--quick")
        .args(["--flint", env!("CARGO_BIN_EXE_flint")])
        .current_dir(root)
        .output()
        .expect("run bench/boot-vs-container");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/boot-vs-container --quick failed ({}):\n{stderr}",
        out.status
    );

    check_results_md(&dir.0.join("results.md"));
    check_runs_csv(&dir.0.join("runs.csv"));
    let png = std::fs::read(dir.0.join("plot.png")).expect("read plot.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "plot.png is not a PNG"
    );
    assert!(
        png.len() > 10_000,
        "plot.png is suspiciously small ({} bytes)",
        png.len()
    );
}

#[test]
fn checkers_reject_bad_output() {
    // The checks above must be able to fail: feed them broken files.
    let dir =
        TempDir(std::env::temp_dir().join(format!("flint-bench-check-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let md = dir.0.join("results.md");
    let csv = dir.0.join("runs.csv");
    let fails = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();

    let good_csv = "system,variant,run,metric,unit,value,reason\n\
                    flint,initramfs,1,launch-to-exit,ms,66000.5,\n\
                    qemu,microvm,1,launch-to-exit,ms,,\"did not exit by itself, killed\"\n\
                    container,runc,1,launch-to-exit,ms,40.1,\n\
                    process,chroot,1,launch-to-exit,ms,1.5,\n";
    std::fs::write(&csv, good_csv).unwrap();
    check_runs_csv(&csv);
    for bad in [
        good_csv.replace(",66000.5,", ",,"),     // empty value, no reason
        good_csv.replace(",66000.5,", ",fast,"), // not a number
        good_csv.replace(",40.1,", ",40.1"),     // short row
        good_csv.replace(
            "\"did not exit by itself, killed\"",
            "did not exit by itself, killed",
        ), // extra column
    ] {
        std::fs::write(&csv, &bad).unwrap();
        assert!(fails(&|| check_runs_csv(&csv)), "accepted bad CSV:\n{bad}");
    }

    let mut good_md = String::new();
    for (title, second) in [("t1", "quantity"), ("t2", "phase"), ("t3", "quantity")] {
        good_md +=
            &format!("## {title}\n\n| system | {second} | runs | median |\n|---|---|---|---|\n");
        for sys in ["flint (initramfs)", "flint (root disk)"] {
            for phase in ["config-parsed", "vm-built", "first-kvm-run"] {
                let v = if second == "phase" { "13.5" } else { "12.5" };
                good_md += &format!("| {sys} | {phase} | 1 | {v} |\n");
            }
        }
        good_md += "| container (runc) | x | 0 | n/a: no kernel: the command is the first process |\n\
                    | host process (chroot) | x | 1 | 1.5 |\n| QEMU microvm (initramfs) | x | 1 | 8000 |\n\n";
    }
    std::fs::write(&md, &good_md).unwrap();
    check_results_md(&md);
    for bad in [
        good_md.replacen("| 1.5 |", "|  |", 1),        // empty cell
        good_md.replacen("| 1.5 |", "| fast |", 1),    // neither number nor reason
        good_md.replacen("| 1.5 |", "| n/a |", 1),     // n/a without a reason
        good_md.replacen("| 1.5 |", "| 1.5 | 2 |", 1), // extra cell
        good_md.replacen(
            "| vm-built | 1 | 13.5 |",
            "| vm-built | 0 | n/a: not reached here |",
            1,
        ), // flint's own phase missing
    ] {
        std::fs::write(&md, &bad).unwrap();
        assert!(
            fails(&|| check_results_md(&md)),
            "accepted bad results.md:\n{bad}"
        );
    }
}
