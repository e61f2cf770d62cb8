//! `flint-seccompiler`: compile seccomp filters from seccompiler's JSON
//! format into the file `flint --seccomp-filter` reads (the format of
//! Firecracker's `seccompiler-bin`), or print flint's built-in filters as
//! JSON (`--print-builtin`), the starting point for a custom file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use seccompiler::TargetArch;

/// Compile a JSON seccomp policy (filters named main, vcpu and api) into a
/// filter file for `flint --seccomp-filter`.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The JSON policy (seccompiler's format).
    #[arg(long, value_name = "FILE", required_unless_present = "print_builtin")]
    input_file: Option<PathBuf>,
    /// Where to write the compiled filters.
    #[arg(long, value_name = "FILE", default_value = "seccomp_binary_filter.out")]
    output_file: PathBuf,
    /// Target architecture; flint runs on x86_64 only.
    #[arg(long, value_name = "ARCH", default_value = "x86_64")]
    target_arch: String,
    /// Print flint's built-in filters as JSON (resources/seccomp/x86_64.json)
    /// and exit.
    #[arg(long, conflicts_with = "input_file")]
    print_builtin: bool,
}

fn run(cli: &Cli) -> Result<(), String> {
    if cli.print_builtin {
        print!("{}", flint::seccomp::builtin_json());
        return Ok(());
    }
    if cli.target_arch != "x86_64" {
        return Err(format!(
            "--target-arch {}: flint runs on x86_64 only",
            cli.target_arch
        ));
    }
    let input = cli.input_file.as_ref().expect("clap requires it");
    let file = std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let map = seccompiler::compile_from_json(std::io::BufReader::new(file), TargetArch::x86_64)
        .map_err(|e| format!("{}: {e}", input.display()))?;
    for kind in flint::seccomp::ThreadKind::ALL {
        if !map.contains_key(kind.name()) {
            return Err(format!(
                "{}: no filter named {:?}; flint needs main, vcpu and api",
                input.display(),
                kind.name()
            ));
        }
    }
    std::fs::write(&cli.output_file, flint::seccomp::encode(&map))
        .map_err(|e| format!("{}: {e}", cli.output_file.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flint-seccompiler: {e}");
            ExitCode::FAILURE
        }
    }
}
