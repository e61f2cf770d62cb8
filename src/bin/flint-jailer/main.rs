//! `flint-jailer`: start flint in a jail, as Firecracker's jailer starts
//! Firecracker: a pivot_root'ed directory of its own holding flint, its
//! ELF interpreter and libraries and three device nodes; a cgroup v2 of
//! its own; optionally a network and a PID namespace; an unprivileged
//! uid/gid; then exec. Everything is checked before anything is made, and
//! a failure removes what the run made. README.md, "Jailer", has the steps.

mod cgroup;
mod cli;
mod elf;
mod jail;
mod sys;
mod undo;

use std::process::ExitCode;

use clap::Parser;

fn run() -> Result<i32, String> {
    let cli = cli::Cli::parse();
    let cg_root = cgroup::host_root();
    let plan = cli.plan(cg_root.as_deref()).map_err(|e| e.to_string())?;
    let runtime = elf::runtime_files(&plan.exec_file).map_err(|e| e.to_string())?;
    jail::run(&plan, &runtime, cg_root.as_deref()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("flint-jailer: {e}");
            ExitCode::FAILURE
        }
    }
}
