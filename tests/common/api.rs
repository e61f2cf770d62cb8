//! Helpers for the API tests: a small HTTP/1.1 client on a unix socket,
//! flint started with `--api-sock`, and a check of every response against
//! the OpenAPI document in src/api/openapi.json.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{artifact, cmdline, spawn, Running};
use serde_json::json;

/// Where API sockets go: `FLINT_TEST_SOCKET_DIR`, else /run (a tmpfs on
/// the host and in the lab VM, where the 9p share cannot hold sockets),
/// else the temporary directory.
pub fn socket_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FLINT_TEST_SOCKET_DIR") {
        return PathBuf::from(d);
    }
    let run = Path::new("/run");
    // SAFETY: access only reads the NUL-terminated path given.
    if unsafe { libc::access(c"/run".as_ptr(), libc::W_OK) } == 0 && run.is_dir() {
        return run.to_path_buf();
    }
    std::env::temp_dir()
}

/// A socket path of its own for each flint a test starts.
pub fn socket_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let p = socket_dir().join(format!(
        "flint-api-{}-{tag}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The fault message of a 400.
    pub fn fault(&self) -> String {
        assert_eq!(self.status, 400, "expected a 400, got {self:?}");
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message: {self:?}"))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive connection to flint's API.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Send raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("write to the API socket");
    }

    /// Read one response.
    pub fn read_reply(&mut self) -> Reply {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header has a colon");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).expect("read body");
        Reply {
            status,
            headers,
            body: String::from_utf8(body).expect("UTF-8 body"),
        }
    }

    /// One request; the answer is checked against the OpenAPI document.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send_raw(req.as_bytes());
        let r = self.read_reply();
        check_against_spec(method, path, &r);
        r
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn put(&mut self, path: &str, body: &str) -> Reply {
        self.call("PUT", path, Some(body))
    }

    pub fn patch(&mut self, path: &str, body: &str) -> Reply {
        self.call("PATCH", path, Some(body))
    }

    /// A PUT/PATCH that must succeed with 204 and no body.
    pub fn ok(&mut self, method: &str, path: &str, body: &str) {
        let r = self.call(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path} {body}: {r:?}");
        assert!(r.body.is_empty(), "{r:?}");
    }
}

/// flint serving its API, with the socket path.
pub struct ApiVm {
    pub vm: Running,
    pub sock: PathBuf,
}

impl ApiVm {
    /// Start flint with `--api-sock` and `args`; wait until the socket
    /// answers.
    pub fn start(tag: &str, args: &[&str]) -> ApiVm {
        let sock = socket_path(tag);
        let mut all = vec!["--api-sock", sock.to_str().unwrap()];
        all.extend_from_slice(args);
        let vm = spawn(&all);
        let mut api = ApiVm { vm, sock };
        api.wait_ready(Duration::from_secs(10));
        api
    }

    /// As [`ApiVm::start`], with flint's working directory `cwd` (where
    /// relative paths in requests land).
    pub fn start_in(tag: &str, cwd: &Path, args: &[&str]) -> ApiVm {
        let mut cmd = std::process::Command::new(super::FLINT);
        cmd.args(args).current_dir(cwd);
        ApiVm::start_command(tag, cmd)
    }

    /// As [`ApiVm::start`], flint being run by `cmd` (which may wrap it:
    /// `ip netns exec`), `--api-sock` added to its arguments.
    pub fn start_command(tag: &str, mut cmd: std::process::Command) -> ApiVm {
        let sock = socket_path(tag);
        cmd.arg("--api-sock").arg(&sock);
        let vm = super::spawn_command(cmd);
        let mut api = ApiVm { vm, sock };
        api.wait_ready(Duration::from_secs(10));
        api
    }

    /// Poll GET /machine-config until it answers, as firecracker-go-sdk
    /// does; returns how long that took.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&self.sock) {
                if c.get("/machine-config").status == 200 {
                    return t0.elapsed();
                }
            }
            if let Ok(Some(s)) = self.vm.child.try_wait() {
                panic!(
                    "flint exited ({s}) before its API answered:\n{}",
                    self.vm.output()
                );
            }
            assert!(t0.elapsed() < timeout, "API not up within {timeout:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.sock).expect("connect to the API")
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        let _ = self.vm.child.kill();
        let _ = self.vm.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read openapi.json"))
            .expect("openapi.json is JSON")
    })
}

/// The document's path template that `path` matches, if any.
fn template_for(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or("");
    let want: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let paths = spec()["paths"].as_object()?;
    paths
        .keys()
        .find(|t| {
            let parts: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
            parts.len() == want.len()
                && parts
                    .iter()
                    .zip(&want)
                    .all(|(p, w)| p.starts_with('{') || p == w)
        })
        .cloned()
}

pub fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = spec();
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            resolve(cur)
        }
        None => v,
    }
}

/// Check `value` against `schema`: types, required fields, enums,
/// additionalProperties: false, recursively. Returns what is wrong.
pub fn validate(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(schema);
    if value.is_null() && schema["nullable"] == Value::Bool(true) {
        return Ok(());
    }
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: {value} is not of type {t}"));
        }
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(value) {
            return Err(format!("{at}: {value} is not one of {e:?}"));
        }
    }
    if let Some(obj) = value.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required field {r:?} is missing"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(v, s, &format!("{at}.{k}"))?,
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: field {k:?} is not in the document"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(v, items, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every answer the tests get must be one the document describes: a
/// listed status for that path and method, and a body of its schema.
/// Unknown paths must be answered with the Error schema.
pub fn check_against_spec(method: &str, path: &str, r: &Reply) {
    let op = template_for(path).and_then(|t| {
        spec()["paths"][&t]
            .get(method.to_ascii_lowercase())
            .cloned()
    });
    let Some(op) = op else {
        assert_eq!(
            r.status, 400,
            "{method} {path} is not in the document: {r:?}"
        );
        let err = &spec()["components"]["schemas"]["Error"];
        validate(&r.json(), err, "body").unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        return;
    };
    let code = r.status.to_string();
    let resp = op["responses"]
        .get(&code)
        .or_else(|| op["responses"].get("default"))
        .unwrap_or_else(|| panic!("{method} {path}: status {code} is not in the document"));
    let resp = resolve(resp);
    match resp["content"]["application/json"].get("schema") {
        Some(schema) => {
            validate(&r.json(), schema, "body")
                .unwrap_or_else(|e| panic!("{method} {path} -> {code}: {e}\n{}", r.body));
        }
        None => assert!(
            r.body.is_empty(),
            "{method} {path} -> {code} has a body: {r:?}"
        ),
    }
    if r.status == 204 {
        assert!(
            r.header("content-length").is_none() || r.header("content-length") == Some("0"),
            "{r:?}"
        );
    }
}

/// A scratch file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, contents: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("flint-api-{}-{tag}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A disk image of `mib` MiB starting with `tag`.
pub fn image(name: &str, mib: usize, tag: &[u8]) -> TempFile {
    let mut data = vec![0u8; mib << 20];
    data[..tag.len()].copy_from_slice(tag);
    TempFile::new(name, &data)
}

pub fn boot_source(extra: &str) -> String {
    json!({
        "kernel_image_path": artifact("kernel"),
        "initrd_path": artifact("initrd"),
        "boot_args": cmdline(extra),
    })
    .to_string()
}

/// Each case: method, path, body, and what the fault message must contain.
pub fn expect_faults(c: &mut Client, cases: &[(&str, &str, &str, &[&str])]) {
    for (method, path, body, needles) in cases {
        let r = c.call(method, path, Some(body));
        let msg = r.fault();
        for n in *needles {
            assert!(
                msg.contains(n),
                "{method} {path} {body}: {msg:?} lacks {n:?}"
            );
        }
    }
}
