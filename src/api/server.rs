//! The HTTP/1.1 side: a listener thread on the unix socket and one thread
//! per connection, so a client that stops halfway through a request holds
//! up no one else. Requests are parsed here; the VMM thread only sees typed
//! [`ApiRequest`](super::ApiRequest)s and answers each on a channel.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{routes, Job, Response, MAX_BODY_BYTES};
use crate::metrics::API;

/// Request line and headers may take this much.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// Errors from setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API socket {0}: the path already exists; remove it or choose another")]
    Exists(PathBuf),
    #[error("API socket {path}: cannot bind it: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the API thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot create the API's wake-up descriptor: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Seccomp(crate::seccomp::Error),
}

/// The VMM thread's end: requests arrive on `jobs`, and `wake` is written
/// once per request.
pub struct ApiChannel {
    pub jobs: std::sync::mpsc::Receiver<Job>,
    pub wake: EventFd,
}

/// Bind `path` and serve it from new threads.
/// The thread installs `filter` (seccomp) before it accepts; the
/// connection threads it starts inherit it.
pub fn start(
    path: &Path,
    filter: Option<Arc<seccompiler::BpfProgram>>,
) -> Result<ApiChannel, Error> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::Exists(path.to_owned()));
    }
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })?;
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let wake_api = wake.try_clone().map_err(Error::EventFd)?;
    let (tx, rx) = channel();
    let (filtered_tx, filtered) = channel();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let r = match &filter {
                Some(f) => crate::seccomp::apply(crate::seccomp::ThreadKind::Api, f),
                None => Ok(()),
            };
            let ok = r.is_ok();
            let _ = filtered_tx.send(r);
            if ok {
                accept_loop(listener, tx, Arc::new(wake_api));
            }
        })
        .map_err(Error::Thread)?;
    match filtered.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Seccomp(e)),
        Err(_) => {
            return Err(Error::Thread(std::io::Error::other(
                "it ended before installing its seccomp filter",
            )))
        }
    }
    Ok(ApiChannel { jobs: rx, wake })
}

fn accept_loop(listener: UnixListener, tx: Sender<Job>, wake: Arc<EventFd>) {
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        API.connection();
        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut s = stream;
            let _ = write_response(
                &mut s,
                &Response::fault(format!(
                    "too many API connections at once (at most {MAX_CONNECTIONS})"
                )),
                false,
            );
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (tx, wake, live2) = (tx.clone(), wake.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                // For the SIGSYS message: this thread inherits the filter.
                crate::seccomp::record_thread_name();
                serve_connection(stream, &tx, &wake);
                live2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Hand `request` to the VMM thread and wait for its answer.
fn dispatch(request: super::ApiRequest, tx: &Sender<Job>, wake: &EventFd) -> Response {
    let (reply, answer) = channel();
    if tx.send(Job { request, reply }).is_err() {
        return Response::fault("the VMM has stopped");
    }
    let _ = wake.write(1);
    answer
        .recv()
        .unwrap_or_else(|_| Response::fault("the VMM has stopped"))
}

/// What one parsed head says.
struct Head {
    method: String,
    path: String,
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
    len: usize,
}

enum HeadResult {
    Partial,
    Done(Head),
    Bad(String),
}

fn parse_head(buf: &[u8]) -> HeadResult {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return HeadResult::Partial,
        Err(e) => return HeadResult::Bad(format!("malformed HTTP request: {e}")),
    };
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        content_length: 0,
        // HTTP/1.1 keeps the connection open unless told otherwise.
        keep_alive: req.version == Some(1),
        expect_continue: false,
        len,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => head.content_length = n,
                Err(_) => {
                    return HeadResult::Bad(format!("Content-Length {value:?} is not a number"))
                }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return HeadResult::Bad(format!(
                "Transfer-Encoding {value:?} is not supported; send a Content-Length"
            ));
        } else if h.name.eq_ignore_ascii_case("expect")
            && value.eq_ignore_ascii_case("100-continue")
        {
            head.expect_continue = true;
        }
    }
    HeadResult::Done(head)
}

/// Read more of the stream into `buf`; false at end of stream or error.
fn fill(stream: &mut UnixStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            true
        }
    }
}

fn serve_connection(mut stream: UnixStream, tx: &Sender<Job>, wake: &EventFd) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf) {
                    HeadResult::Done(h) => break h,
                    HeadResult::Bad(msg) => {
                        API.request(false);
                        let _ = write_response(&mut stream, &Response::Fault(msg), false);
                        return;
                    }
                    HeadResult::Partial if buf.len() > MAX_HEAD_BYTES => {
                        API.request(false);
                        let msg = format!("the request head is over {MAX_HEAD_BYTES} bytes");
                        let _ = write_response(&mut stream, &Response::Fault(msg), false);
                        return;
                    }
                    HeadResult::Partial => {}
                }
            }
            if !fill(&mut stream, &mut buf) {
                return;
            }
        };
        if head.content_length > MAX_BODY_BYTES {
            API.request(false);
            let msg = format!(
                "the request body is {} bytes, over the limit of {MAX_BODY_BYTES} bytes",
                head.content_length
            );
            // The body is not read, so the connection cannot go on.
            let _ = write_response(&mut stream, &Response::Fault(msg), false);
            return;
        }
        if head.expect_continue
            && buf.len() < head.len + head.content_length
            && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        while buf.len() < head.len + head.content_length {
            if !fill(&mut stream, &mut buf) {
                return;
            }
        }
        // The loop above read the whole body in.
        let body = buf
            .get(head.len..head.len + head.content_length)
            .unwrap_or_default();
        let response = match routes::parse(&head.method, &head.path, body) {
            Ok(request) => dispatch(request, tx, wake),
            Err(msg) => Response::Fault(msg),
        };
        API.request(response.status() < 300);
        buf.drain(..head.len + head.content_length);
        if write_response(&mut stream, &response, head.keep_alive).is_err() || !head.keep_alive {
            return;
        }
    }
}

/// One whole request in `buf` as the connection thread reads it: the head,
/// the body limit, the route. `None` when `buf` holds only part of one.
/// Public for the fuzz targets.
#[doc(hidden)]
pub fn parse_request(buf: &[u8]) -> Option<Result<super::ApiRequest, String>> {
    let head = match parse_head(buf) {
        HeadResult::Partial => return None,
        HeadResult::Bad(msg) => return Some(Err(msg)),
        HeadResult::Done(h) => h,
    };
    if head.content_length > MAX_BODY_BYTES {
        return Some(Err("body over the limit".into()));
    }
    let body = buf.get(head.len..head.len + head.content_length)?;
    Some(routes::parse(&head.method, &head.path, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        _ => "Bad Request",
    }
}

/// Write one response; `keep_alive` false also says the connection closes.
pub fn write_response(
    stream: &mut impl Write,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let status = response.status();
    let body = response.body();
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: flint\r\nConnection: {}\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status != 204 {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let HeadResult::Done(h) =
            parse_head(b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nbody")
        else {
            panic!()
        };
        assert_eq!((h.method.as_str(), h.path.as_str()), ("PUT", "/actions"));
        assert_eq!(h.content_length, 12);
        assert!(h.keep_alive);
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost"),
            HeadResult::Partial
        ));
        let HeadResult::Done(h) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!()
        };
        assert!(!h.keep_alive);
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            HeadResult::Bad(m) if m.contains("Content-Length")
        ));
        assert!(matches!(
            parse_head(b"\x01\x02 / HTTP/1.1\r\n\r\n"),
            HeadResult::Bad(_)
        ));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::NoContent, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n") && !text.contains("Content-Length"));
        let mut out = Vec::new();
        write_response(&mut out, &Response::fault("no \"kernel\""), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["fault_message"], "no \"kernel\"");
        assert!(text.contains(&format!("Content-Length: {}", body.len())));
    }
}
