//! A bounded fuzz of the API, driven by src/api/openapi.json: requests
//! built from the document's schemas, then bent (wrong types, nulls,
//! missing and unknown fields, odd ids, odd methods), thousands of them.
//! Every answer must be one the document describes, within a second, and
//! flint must still answer at the end. No guest is started: kernels are
//! only ever files that are not kernels.

mod common;

use std::time::{Duration, Instant};

use common::api::{resolve, spec, ApiVm};
use serde_json::{json, Map, Value};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const STRINGS: &[&str] = &[
    "",
    "a",
    "eth0",
    "rootfs",
    "/dev/null",
    "/nonexistent/file",
    "None",
    "Info",
    "Paused",
    "Resumed",
    "InstanceStart",
    "FlushMetrics",
    "Writeback",
    "Async",
    "06:00:ac:10:00:02",
    "ünïcødé",
    "id with spaces",
    "../../etc/passwd",
];

fn junk(rng: &mut Rng) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => json!(rng.next() as i64),
        2 => json!(-1),
        3 => json!(1.5e300),
        4 => json!([1, "two"]),
        5 => json!({"nested": {"deep": true}}),
        _ => json!("x".repeat(rng.below(300))),
    }
}

/// A value for `schema`, usually of the right shape.
fn value(rng: &mut Rng, schema: &Value, depth: usize) -> Value {
    let schema = resolve(schema);
    if depth > 4 || rng.chance(8) {
        return junk(rng);
    }
    if let Some(e) = schema["enum"].as_array() {
        if rng.chance(85) {
            return rng.pick(e).clone();
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut m = Map::new();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    let keep = if required.contains(&k.as_str()) {
                        rng.chance(92)
                    } else {
                        rng.chance(50)
                    };
                    if keep {
                        m.insert(k.clone(), value(rng, s, depth + 1));
                    }
                }
            }
            if rng.chance(5) {
                m.insert("not_a_field".into(), json!(1));
            }
            Value::Object(m)
        }
        Some("array") => {
            let n = rng.below(3);
            Value::Array(
                (0..n)
                    .map(|_| value(rng, &schema["items"], depth + 1))
                    .collect(),
            )
        }
        Some("string") => json!(rng.pick(STRINGS)),
        Some("integer") => json!(*rng.pick(&[0u64, 1, 2, 3, 16, 128, 255, 1024, u64::MAX])),
        Some("boolean") => json!(rng.chance(50)),
        _ => junk(rng),
    }
}

fn fill_path(rng: &mut Rng, template: &str) -> String {
    template
        .split('/')
        .map(|part| {
            if part.starts_with('{') {
                rng.pick(&[
                    "eth0",
                    "rootfs",
                    "1",
                    "a-b_c",
                    "bad!id",
                    "x".repeat(70).as_str(),
                ])
                .to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn thousands_of_generated_requests_get_documented_answers() {
    // Generated relative paths (a metrics or log file named "eth0") land
    // in a scratch directory, not in the source tree.
    let dir = std::env::temp_dir().join(format!("flint-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = ApiVm::start_in("fuzz", &dir, &[]);
    let mut c = api.client();
    let paths: Vec<(String, Value)> = spec()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut rng = Rng(0x5eed_f11e_u64 ^ u64::from(std::process::id()));
    let (mut n, mut ok) = (0, 0);
    let t0 = Instant::now();
    while n < 3000 && t0.elapsed() < Duration::from_secs(60) {
        let (template, item) = rng.pick(&paths).clone();
        let ops: Vec<&String> = item.as_object().unwrap().keys().collect();
        let method = if rng.chance(5) {
            rng.pick(&["DELETE", "POST", "HEAD", "OPTIONS"]).to_string()
        } else {
            rng.pick(&ops).to_ascii_uppercase()
        };
        let path = fill_path(&mut rng, &template);
        let schema = &item[method.to_ascii_lowercase()]["requestBody"]["content"]
            ["application/json"]["schema"];
        let body = if schema.is_null() {
            None
        } else if rng.chance(3) {
            Some("{\"unterminated\": ".to_string())
        } else {
            Some(value(&mut rng, schema, 0).to_string())
        };
        if method == "HEAD" {
            continue; // a HEAD answer has no body to read back
        }
        let t = Instant::now();
        // check_against_spec runs inside call().
        let r = c.call(&method, &path, body.as_deref());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{method} {path}: {:?}",
            t.elapsed()
        );
        assert!(r.status < 500, "{method} {path} {body:?}: {r:?}");
        n += 1;
        if r.status < 300 {
            ok += 1;
        }
    }
    eprintln!("fuzz: {n} requests, {ok} accepted, in {:?}", t0.elapsed());
    assert!(n >= 500, "only {n} requests in the time bound");
    assert!(
        ok > 0,
        "nothing generated was ever accepted: the generator is broken"
    );
    let state = c.get("/").json()["state"].clone();
    assert_eq!(state, "Not started");
    drop(api);
    std::fs::remove_dir_all(&dir).unwrap();
}
