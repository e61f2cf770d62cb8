//! From method, path and body to an [`ApiRequest`], or the message of a 400
//! that names what is wrong.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ActionBody, ApiRequest, MachinePut, PartialDrive, PartialNet, VmBody};
use crate::builder::MachinePatch;
use crate::config::{
    valid_id, BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSource, DriveConfig,
    EntropyConfig, LoggerConfig, MetricsConfig, NetConfig, VsockConfig,
};

/// Paths of Firecracker features flint does not have yet.
const UNSUPPORTED: [(&str, &str); 6] = [
    ("mmds", "MMDS (the microVM metadata service)"),
    ("cpu-config", "CPU templates (cpu-config)"),
    ("pmem", "virtio-pmem"),
    ("hotplug", "memory hotplug"),
    ("serial", "serial console configuration over the API"),
    ("shutdown", "a shutdown action"),
];

/// Fields of Firecracker bodies flint accepts only as null or absent.
const UNSUPPORTED_FIELDS: [(&str, &str); 5] = [
    ("rate_limiter", "rate limiters"),
    ("rx_rate_limiter", "rate limiters"),
    ("tx_rate_limiter", "rate limiters"),
    ("partuuid", "partuuid (root by partition UUID)"),
    ("socket", "vhost-user drives (socket)"),
];

fn parse_body<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    parse_body_allowing(what, body, &[])
}

/// [`parse_body`], with the fields in `allowed` taken as they are (the
/// entropy device has a rate limiter; drives and NICs do not yet).
fn parse_body_allowing<T: DeserializeOwned>(
    what: &str,
    body: &[u8],
    allowed: &[&str],
) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "{what}: the request has no body; it needs a JSON object"
        ));
    }
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("{what}: the body is not valid JSON: {e}"))?;
    if let Value::Object(map) = &mut v {
        for (field, feature) in UNSUPPORTED_FIELDS {
            if allowed.contains(&field) {
                continue;
            }
            match map.get(field) {
                Some(Value::Null) => {
                    map.remove(field);
                }
                Some(_) => {
                    return Err(format!(
                        "{what}: {field}: flint does not support {feature} yet"
                    ))
                }
                None => {}
            }
        }
    } else {
        return Err(format!("{what}: the body must be a JSON object"));
    }
    // The path names the field a type error is about ("mem_size_mib:
    // invalid type..."); serde_json alone only says what it expected.
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            format!("{what}: {}", e.inner())
        } else {
            format!("{what}: {path}: {}", e.inner())
        }
    })
}

fn check_ids(what: &str, field: &str, path_id: &str, body_id: &str) -> Result<(), String> {
    if !valid_id(path_id) {
        return Err(format!(
            "{what}: the id {path_id:?} in the path is not valid: use 1 to 64 characters, \
             each a letter, a digit, '_' or '-'"
        ));
    }
    if path_id != body_id {
        return Err(format!(
            "{what}: the {field} in the body ({body_id:?}) differs from the id in the path \
             ({path_id:?})"
        ));
    }
    Ok(())
}

/// Parse one request. `path` may carry a query string, which is ignored.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, String> {
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let what = format!("{method} {path}");
    let bad_method = |allowed: &str| {
        Err(format!(
            "{what}: method {method} is not allowed on this path (allowed: {allowed})"
        ))
    };
    match segments.as_slice() {
        [] => match method {
            "GET" => Ok(ApiRequest::GetInstance),
            _ => bad_method("GET"),
        },
        ["version"] => match method {
            "GET" => Ok(ApiRequest::GetVersion),
            _ => bad_method("GET"),
        },
        ["vm", "config"] => match method {
            "GET" => Ok(ApiRequest::GetVmConfig),
            _ => bad_method("GET"),
        },
        ["vm"] => match method {
            "PATCH" => Ok(ApiRequest::PatchVm(
                parse_body::<VmBody>(&what, body)?.state,
            )),
            _ => bad_method("PATCH"),
        },
        ["machine-config"] => match method {
            "GET" => Ok(ApiRequest::GetMachine),
            "PUT" => Ok(ApiRequest::PutMachine(
                parse_body::<MachinePut>(&what, body)?.into(),
            )),
            "PATCH" => Ok(ApiRequest::PatchMachine(parse_body::<MachinePatch>(
                &what, body,
            )?)),
            _ => bad_method("GET, PUT, PATCH"),
        },
        ["boot-source"] => match method {
            "PUT" => Ok(ApiRequest::PutBootSource(parse_body::<BootSource>(
                &what, body,
            )?)),
            _ => bad_method("PUT"),
        },
        ["drives", id] => match method {
            "PUT" => {
                let d: DriveConfig = parse_body(&what, body)?;
                check_ids(&what, "drive_id", id, &d.drive_id)?;
                Ok(ApiRequest::PutDrive(d))
            }
            "PATCH" => {
                let d: PartialDrive = parse_body(&what, body)?;
                check_ids(&what, "drive_id", id, &d.drive_id)?;
                Ok(ApiRequest::PatchDrive(d))
            }
            _ => bad_method("PUT, PATCH"),
        },
        ["network-interfaces", id] => match method {
            "PUT" => {
                let n: NetConfig = parse_body(&what, body)?;
                check_ids(&what, "iface_id", id, &n.iface_id)?;
                Ok(ApiRequest::PutNet(n))
            }
            "PATCH" => {
                let n: PartialNet = parse_body(&what, body)?;
                check_ids(&what, "iface_id", id, &n.iface_id)?;
                Ok(ApiRequest::PatchNet(n))
            }
            _ => bad_method("PUT, PATCH"),
        },
        ["logger"] => match method {
            "PUT" => Ok(ApiRequest::PutLogger(parse_body::<LoggerConfig>(
                &what, body,
            )?)),
            _ => bad_method("PUT"),
        },
        ["metrics"] => match method {
            "PUT" => Ok(ApiRequest::PutMetrics(parse_body::<MetricsConfig>(
                &what, body,
            )?)),
            _ => bad_method("PUT"),
        },
        ["actions"] => match method {
            "PUT" => Ok(ApiRequest::Action(
                parse_body::<ActionBody>(&what, body)?.action_type,
            )),
            _ => bad_method("PUT"),
        },
        ["vsock"] => match method {
            "PUT" => Ok(ApiRequest::PutVsock(parse_body::<VsockConfig>(
                &what, body,
            )?)),
            _ => bad_method("PUT"),
        },
        ["entropy"] => match method {
            "PUT" => Ok(ApiRequest::PutEntropy(
                parse_body_allowing::<EntropyConfig>(&what, body, &["rate_limiter"])?,
            )),
            _ => bad_method("PUT"),
        },
        ["balloon"] => match method {
            "GET" => Ok(ApiRequest::GetBalloon),
            "PUT" => Ok(ApiRequest::PutBalloon(parse_body::<BalloonConfig>(
                &what, body,
            )?)),
            "PATCH" => Ok(ApiRequest::PatchBalloon(parse_body::<BalloonUpdate>(
                &what, body,
            )?)),
            _ => bad_method("GET, PUT, PATCH"),
        },
        ["balloon", "statistics"] => match method {
            "GET" => Ok(ApiRequest::GetBalloonStats),
            "PATCH" => Ok(ApiRequest::PatchBalloonStats(parse_body::<
                BalloonStatsUpdate,
            >(&what, body)?)),
            _ => bad_method("GET, PATCH"),
        },
        ["snapshot", "create"] => match method {
            "PUT" => Ok(ApiRequest::CreateSnapshot(parse_body(&what, body)?)),
            _ => bad_method("PUT"),
        },
        ["snapshot", "load"] => match method {
            "PUT" => Ok(ApiRequest::LoadSnapshot(parse_body(&what, body)?)),
            _ => bad_method("PUT"),
        },
        [first, ..] => match UNSUPPORTED.iter().find(|(p, _)| p == first) {
            Some((_, feature)) => Err(format!("{what}: flint does not support {feature} yet")),
            None => Err(format!("Invalid request method and/or path: {what}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ActionType, VmStateBody};

    fn err(method: &str, path: &str, body: &str) -> String {
        parse(method, path, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn firecracker_paths() {
        assert_eq!(parse("GET", "/", b"").unwrap(), ApiRequest::GetInstance);
        assert_eq!(
            parse("GET", "/version", b"").unwrap(),
            ApiRequest::GetVersion
        );
        assert_eq!(
            parse("GET", "/vm/config", b"").unwrap(),
            ApiRequest::GetVmConfig
        );
        assert_eq!(
            parse("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#).unwrap(),
            ApiRequest::Action(ActionType::InstanceStart)
        );
        assert_eq!(
            parse("PATCH", "/vm", br#"{"state": "Paused"}"#).unwrap(),
            ApiRequest::PatchVm(VmStateBody::Paused)
        );
        let r = parse(
            "PUT",
            "/drives/rootfs",
            br#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                 "is_read_only": null, "rate_limiter": null, "cache_type": "Writeback"}"#,
        )
        .unwrap();
        let ApiRequest::PutDrive(d) = r else {
            panic!("{r:?}")
        };
        assert!(d.is_root_device && !d.is_read_only);
        let r = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}"#,
        )
        .unwrap();
        let ApiRequest::PutMachine(m) = r else {
            panic!("{r:?}")
        };
        assert!(m.smt);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = err("PUT", "/boot-source", "{\"kernel_image_path\": ");
        assert!(e.contains("not valid JSON"), "{e}");
        let e = err("PUT", "/boot-source", "");
        assert!(e.contains("no body"), "{e}");
        let e = err("PUT", "/boot-source", r#"{"kernel_image_path": 5}"#);
        assert!(e.contains("invalid type: integer `5`, expected"), "{e}");
        let e = err("PUT", "/machine-config", r#"{"vcpu_count": 2}"#);
        assert!(e.contains("missing field `mem_size_mib`"), "{e}");
        let e = err("PUT", "/logger", r#"{"log_path": "/x", "colour": true}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "/r", "is_root_device": false}"#,
        );
        assert!(
            e.contains("differs") && e.contains("\"a\"") && e.contains("\"b\""),
            "{e}"
        );
        let e = err(
            "PUT",
            "/drives/a!b",
            r#"{"drive_id": "a!b", "path_on_host": "/r", "is_root_device": false}"#,
        );
        assert!(e.contains("not valid"), "{e}");
        let e = err(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
        );
        assert!(e.contains("rate limiters yet"), "{e}");
        assert_eq!(
            err("GET", "/nope", ""),
            "Invalid request method and/or path: GET /nope"
        );
        assert!(err("DELETE", "/boot-source", "").contains("method DELETE is not allowed"));
        assert!(err("PUT", "/vsock", "{}").contains("missing field `guest_cid`"));
        assert!(err("PUT", "/mmds", "{}").contains("flint does not support MMDS"));
        assert!(err("DELETE", "/balloon", "").contains("allowed: GET, PUT, PATCH"));
        assert!(err("PUT", "/balloon/statistics", "{}").contains("allowed: GET, PATCH"));
        assert!(err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/r", "rate_limiter": {}}"#
        )
        .contains("rate limiters yet"));
        let r = parse(
            "PUT",
            "/entropy",
            br#"{"rate_limiter": {"bandwidth": {"size": 100, "refill_time": 1000}}}"#,
        )
        .unwrap();
        assert!(
            matches!(&r, ApiRequest::PutEntropy(e) if e.rate_limiter.is_some()),
            "{r:?}"
        );
        assert_eq!(
            parse("GET", "/balloon/statistics", b"").unwrap(),
            ApiRequest::GetBalloonStats
        );
        assert!(err("PUT", "/snapshot/create", "{}").contains("snapshot_path"));
        assert!(err("PUT", "/actions", r#"{"action_type": "Reboot"}"#).contains("unknown variant"));
    }
}
