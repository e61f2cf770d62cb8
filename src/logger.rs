//! A minimal logger for the `log` macros used across flint and its devices:
//! one line per record on stderr, `flint: LEVEL: message`, or, once a log
//! file is configured (`--log-path`, `PUT /logger`), lines of the form
//! `[ID] [LEVEL] [file:line] message` in that file (level and origin as
//! asked), as Firecracker's logger writes them.
//!
//! Lines a guest can cause (bad register accesses, malformed requests) go
//! through `devices::rate_limited!`, so a guest cannot flood the host's log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Errors from configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log_path {path}: cannot open it for writing: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("level {0:?} is not one of Error, Warning, Info, Debug, Trace, Off")]
    Level(String),
}

struct Sink {
    file: Option<File>,
    id: String,
    show_level: bool,
    show_origin: bool,
}

struct FlintLogger {
    sink: Mutex<Sink>,
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

impl Log for FlintLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if sink.file.is_none() {
            eprintln!("flint: {}: {}", level_name(record.level()), record.args());
            return;
        }
        let mut line = format!("[{}]", sink.id);
        if sink.show_level {
            line.push_str(&format!(" [{}]", level_name(record.level())));
        }
        if sink.show_origin {
            line.push_str(&format!(
                " [{}:{}]",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}\n", record.args()));
        let Sink { file, .. } = &mut *sink;
        if let Some(f) = file {
            // A full FIFO or a failing disk must not stop the VMM.
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: FlintLogger = FlintLogger {
    sink: Mutex::new(Sink {
        file: None,
        id: String::new(),
        show_level: false,
        show_origin: false,
    }),
};

/// Parse a level name as given to `--log-level`, `--level` or `PUT
/// /logger` (any case; "warning" and "warn" both work).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    let lower = s.to_ascii_lowercase();
    let name = if lower == "warning" { "warn" } else { &lower };
    name.parse::<LevelFilter>()
        .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug, trace"))
}

/// Install the logger at `level`; later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Where and how to log from now on.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub path: Option<PathBuf>,
    pub level: Option<String>,
    pub show_level: bool,
    pub show_origin: bool,
    pub instance_id: String,
}

/// Apply `s`: open the file (appended to; a FIFO without a reader is an
/// error, not a hang) and set the level.
pub fn configure(s: &Settings) -> Result<(), Error> {
    let level = match &s.level {
        Some(l) => Some(parse_level(l).map_err(|_| Error::Level(l.clone()))?),
        None => None,
    };
    let file = match &s.path {
        Some(p) => Some(open(p)?),
        None => None,
    };
    let _ = log::set_logger(&LOGGER);
    if let Some(l) = level {
        log::set_max_level(l);
    }
    let mut sink = LOGGER.sink.lock().unwrap_or_else(|e| e.into_inner());
    if file.is_some() {
        sink.file = file;
    }
    sink.id = s.instance_id.clone();
    sink.show_level = s.show_level;
    sink.show_origin = s.show_origin;
    Ok(())
}

fn open(path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("Warning"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("Info"), Ok(LevelFilter::Info));
        assert!(parse_level("loud").unwrap_err().contains("loud"));
    }
}
