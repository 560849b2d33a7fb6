//! `boomgpu serve` end to end: the binary on an ephemeral port with the
//! tiny Qwen3 pair, spoken to over HTTP (ureq). Log-probabilities against
//! `eval`, streaming against non-streaming, concurrency against running
//! alone, every bad input against its status code, a full queue, a client
//! that leaves, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let t = fixture("qwen3");
        let s = fixture("qwen3-distilled");
        let mut child = boomgpu_cmd()
            .args([
                "serve",
                "--teacher",
                t.to_str().unwrap(),
                "--student",
                s.to_str().unwrap(),
            ])
            .args(["--port", "0", "--ctx", "256"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the server did not start:\n{}", log.lock().unwrap()));
        Server {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, None)
    }

    fn post_with(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut r = ureq::post(&format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        answer(r.send_string(&body.to_string()))
    }

    fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        answer(ureq::post(&format!("{}{path}", self.base)).send_string(body))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        answer(ureq::get(&format!("{}{path}", self.base)).call())
    }

    /// The `data:` payloads of a streamed response.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = ureq::post(&format!("{}{path}", self.base))
            .send_string(&body.to_string())
            .unwrap();
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let mut text = String::new();
        r.into_reader().read_to_string(&mut text).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }

    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => {
            let retry = r.header("retry-after").map(String::from);
            let mut v: Value = r.into_json().unwrap_or(Value::Null);
            if let Some(x) = retry {
                v["retry_after"] = json!(x);
            }
            (code, v)
        }
        Err(e) => panic!("{e}"),
    }
}

fn prompt_text() -> String {
    let t = std::fs::read_to_string(fixture_path("text.txt")).unwrap();
    t.chars().take(300).collect()
}

#[test]
fn every_size_scores_as_eval_does() {
    let srv = Server::start(&[]);
    let (code, models) = srv.get("/v1/models");
    assert_eq!(code, 200);
    let ids: Vec<String> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["qwen3-l4", "qwen3-l4-k0", "qwen3-l5", "qwen3-l6"],
        "{models}"
    );
    let text = prompt_text();
    let w = tmpdir("serve-eval");
    let data = w.join("p.txt");
    std::fs::write(&data, &text).unwrap();
    let t = fixture("qwen3");
    let st = fixture("qwen3-distilled");
    for (model, layers) in [
        ("student", None),
        ("qwen3-l4-k0", Some("0")),
        ("qwen3-l5", Some("1")),
        ("teacher", Some("2")),
    ] {
        let (code, v) = srv.post(
            "/v1/completions",
            &json!({"model": model, "prompt": text, "max_tokens": 0, "echo": true, "logprobs": 3}),
        );
        assert_eq!(code, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["text"], text.as_str());
        let lp = &c["logprobs"];
        let tl = lp["token_logprobs"].as_array().unwrap();
        assert!(tl[0].is_null());
        let n = tl.len();
        assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
        assert_eq!(v["usage"]["prompt_tokens"], n);
        let offsets: Vec<u64> = lp["text_offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert!(offsets[0] == 0 && offsets.windows(2).all(|p| p[0] <= p[1]));
        let sum: f64 = tl[1..].iter().map(|x| x.as_f64().unwrap()).sum();
        for (i, top) in lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .skip(1)
        {
            let top = top.as_object().unwrap();
            assert!(!top.is_empty() && top.len() <= 3);
            let best = top
                .values()
                .map(|x| x.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!(best >= tl[i].as_f64().unwrap() - 1e-9, "{i}");
        }
        // eval of the same size on the same text, one window.
        let mut args = vec![
            "eval",
            "--json",
            "--seq-len",
            "256",
            "--data",
            data.to_str().unwrap(),
        ];
        match layers {
            None => args.extend(["--model", st.to_str().unwrap()]),
            Some(k) => args.extend([
                "--teacher",
                t.to_str().unwrap(),
                "--student",
                st.to_str().unwrap(),
                "--layers",
                k,
            ]),
        }
        let e: Value = serde_json::from_str(ok(&boomgpu_run(&args)).trim()).unwrap();
        assert_eq!(e["predicted"], (n - 1) as u64, "{model}");
        close(
            &format!("{model}: -sum of logprobs vs eval's nll"),
            -sum,
            e["nll"].as_f64().unwrap(),
            1e-4,
        );
    }
    // The exported size answers as its size in the server does.
    let out = w.join("l5");
    ok(&boomgpu_run(&[
        "patch",
        "--teacher",
        t.to_str().unwrap(),
        "--student",
        st.to_str().unwrap(),
        "--layers",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]));
    let e: Value = serde_json::from_str(
        ok(&boomgpu_run(&[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--json",
            "--seq-len",
            "256",
            "--data",
            data.to_str().unwrap(),
        ]))
        .trim(),
    )
    .unwrap();
    let (_, v) = srv.post(
        "/v1/completions",
        &json!({"model": "qwen3-l5", "prompt": text, "max_tokens": 1, "echo": true, "logprobs": 0, "temperature": 0}),
    );
    let tl = v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .clone();
    // One generated token after the prompt: its logprob is there too.
    let prompt_n = e["predicted"].as_u64().unwrap() as usize + 1;
    assert_eq!(tl.len(), prompt_n + 1);
    let sum: f64 = tl[1..prompt_n].iter().map(|x| x.as_f64().unwrap()).sum();
    close("patch + eval", -sum, e["nll"].as_f64().unwrap(), 1e-4);
    std::fs::remove_dir_all(&w).unwrap();
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped: every request answered"), "{log}");
}

#[test]
fn streaming_concurrency_and_departures() {
    let srv = Server::start(&["--max-batch", "8"]);
    let text = prompt_text();
    let body = json!({"model": "qwen3-l5", "prompt": text, "max_tokens": 24, "temperature": 0});
    let (code, v) = srv.post("/v1/completions", &body);
    assert_eq!(code, 200, "{v}");
    let alone = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["usage"]["completion_tokens"], 24);
    // Streamed pieces add up to the same text.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let chunks = srv.stream("/v1/completions", &sb);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let streamed: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(streamed, alone);
    // Chat: streamed deltas equal the message.
    let chat = json!({"model": "student", "messages": [{"role": "user", "content": "hello there"}],
                      "max_tokens": 12, "temperature": 0});
    let (code, v) = srv.post("/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{v}");
    let msg = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    let chunks = srv.stream("/v1/chat/completions", &sc);
    let deltas: String = chunks[..chunks.len() - 1]
        .iter()
        .filter_map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(deltas, msg);
    // Chat logprobs: one entry per answer token; greedy picks the most
    // likely, so each chosen logprob is the top of its list.
    let mut lc = chat.clone();
    lc["logprobs"] = json!(true);
    lc["top_logprobs"] = json!(3);
    let (code, v) = srv.post("/v1/chat/completions", &lc);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], msg.as_str());
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        let best = top[0]["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && (lp - best).abs() <= 1e-5, "{e}");
        assert_eq!(top[0]["token"], e["token"], "{e}");
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, e["token"].as_str().unwrap().as_bytes());
    }
    // Without stream only; top_logprobs needs logprobs.
    lc["stream"] = json!(true);
    assert_eq!(srv.post("/v1/chat/completions", &lc).0, 400);
    let mut bad = chat.clone();
    bad["top_logprobs"] = json!(2);
    assert_eq!(srv.post("/v1/chat/completions", &bad).0, 400);
    // Eight clients at once each get the answer they get alone.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (base, body) = (srv.base.clone(), body.clone());
            std::thread::spawn(move || {
                let r = ureq::post(&format!("{base}/v1/completions"))
                    .send_string(&body.to_string())
                    .unwrap();
                let v: Value = r.into_json().unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), alone);
    }
    // A client that leaves mid-stream: its request is dropped, not finished.
    let mut long = body.clone();
    long["max_tokens"] = json!(200);
    long["ignore_eos"] = json!(true);
    long["stream"] = json!(true);
    let r = ureq::post(&format!("{}/v1/completions", srv.base))
        .send_string(&long.to_string())
        .unwrap();
    let mut reader = BufReader::new(r.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let id = serde_json::from_str::<Value>(first.trim().strip_prefix("data: ").unwrap()).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(reader);
    let t0 = Instant::now();
    loop {
        let (_, h) = srv.get("/health");
        if h["queued_or_running"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the departed request still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains(&format!("{id} ")),
        "{id} was finished though its client left:\n{log}"
    );
}

#[test]
fn bad_input_gets_its_status_and_the_server_keeps_serving() {
    let srv = Server::start(&[
        "--api-key",
        "sekrit",
        "--max-batch",
        "1",
        "--max-queue",
        "1",
    ]);
    let good = json!({"model": "student", "prompt": "the", "max_tokens": 2, "temperature": 0});
    let post = |body: &Value| srv.post_with("/v1/completions", body, Some("sekrit"));
    // Keys.
    assert_eq!(srv.post("/v1/completions", &good).0, 401);
    let (code, v) = srv.post_with("/v1/completions", &good, Some("wrong"));
    assert_eq!(
        (code, v["error"]["code"].clone()),
        (401, json!("invalid_api_key"))
    );
    // Bodies.
    let (code, v) = answer(
        ureq::post(&format!("{}/v1/completions", srv.base))
            .set("Authorization", "Bearer sekrit")
            .send_string("{not json"),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let cases = [
        (json!({"model": "nope", "prompt": "x"}), 404, "model"),
        (
            json!({"model": "student", "prompt": "x", "temperature": 9}),
            400,
            "temperature",
        ),
        (
            json!({"model": "student", "prompt": [5, 99999]}),
            400,
            "prompt",
        ),
        (
            json!({"model": "student", "prompt": "x", "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (
            json!({"model": "student", "prompt": vec![1; 300]}),
            400,
            "prompt",
        ),
        (json!({"model": "student"}), 400, "prompt"),
    ];
    for (body, status, param) in cases {
        let (code, v) = post(&body);
        assert_eq!(code, status, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(v["error"]["type"].is_string() && v["error"]["message"].is_string());
    }
    let (_, v) = post(&json!({"model": "student", "prompt": vec![1; 300]}));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (code, _) = srv.post_raw("/v1/nowhere", "{}");
    assert_eq!(code, 404);
    // A full queue: 429 with Retry-After while one long request runs.
    let (base, long) = (
        srv.base.clone(),
        json!({"model": "teacher", "prompt": "the", "max_tokens": 240, "temperature": 0,
               "ignore_eos": true}),
    );
    let first = std::thread::spawn(move || {
        answer(
            ureq::post(&format!("{base}/v1/completions"))
                .set("Authorization", "Bearer sekrit")
                .send_string(&long.to_string()),
        )
    });
    let t0 = Instant::now();
    while srv.get("/health").1["queued_or_running"] == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, v) = post(&good);
    let saw_429 = code == 429;
    if saw_429 {
        assert_eq!(v["retry_after"], "1", "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    }
    assert!(saw_429, "no 429 with a queue of one");
    assert_eq!(first.join().unwrap().0, 200);
    // Still serving.
    let (code, v) = post(&good);
    assert_eq!(code, 200, "{v}");
    assert_eq!(srv.get("/health").0, 200);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    let srv = Server::start(&[]);
    let (base, body) = (
        srv.base.clone(),
        json!({"model": "teacher", "prompt": "the", "max_tokens": 120, "temperature": 0,
               "ignore_eos": true}),
    );
    let req = std::thread::spawn(move || {
        answer(ureq::post(&format!("{base}/v1/completions")).send_string(&body.to_string()))
    });
    // Wait until it runs, then ask the server to stop.
    let t0 = Instant::now();
    while srv.get("/health").1["queued_or_running"] == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, log) = srv.stop();
    let (code, v) = req.join().unwrap();
    assert_eq!(code, 200, "{v}\n{log}");
    assert_eq!(v["usage"]["completion_tokens"], 120, "{v}");
    assert!(status.success(), "{log}");
    assert!(log.contains("stopping: no new connections"), "{log}");
}
