//! The OpenAI-compatible request bodies `boomgpu serve` accepts, checked
//! field by field into plain structs (no GPU, no HTTP): every refusal names
//! the parameter, as OpenAI's error bodies do.

use serde_json::{json, Map, Value};

use crate::infer::chat::Message;

/// An error for the client: HTTP status and an OpenAI-style body
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn body_error(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn not_found(model: &str, known: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("The model '{model}' does not exist; this server has: {known}"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            message: "Missing or wrong API key: send 'Authorization: Bearer KEY' with the key \
                      the server was started with (--api-key)"
                .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn busy(queued: usize) -> ApiError {
        ApiError {
            status: 429,
            message: format!(
                "The server is busy ({queued} requests queued or running, the most it takes); \
                 retry shortly"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    pub fn context(param: &str, tokens: usize, ctx: usize) -> ApiError {
        ApiError {
            status: 400,
            message: format!(
                "This model's maximum context length is {ctx} tokens (--ctx); the request needs \
                 {tokens}"
            ),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("context_length_exceeded"),
        }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn unavailable() -> ApiError {
        ApiError {
            status: 503,
            message: "The server is shutting down".into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// A prompt: text to tokenise, or token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Sampling and stopping shared by both endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Generate to `max_tokens` past end-of-text (vLLM's extension).
    pub ignore_eos: bool,
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    pub prompts: Vec<Prompt>,
    pub sampling: Sampling,
    /// `logprobs: N`: the chosen token's and the N most likely ones.
    pub logprobs: Option<usize>,
    pub echo: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    /// `logprobs: true` with `top_logprobs: N` (0 without it): the answer's
    /// tokens' log-probabilities and the N most likely at each.
    pub logprobs: Option<usize>,
}

/// The most `logprobs` a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;
/// The most prompts of one completions request.
pub const MAX_PROMPTS: usize = 64;

fn object(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::body_error("The request body must be a JSON object"))
}

fn model_of(o: &Map<String, Value>) -> Result<String, ApiError> {
    match o.get("model") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(
            "model",
            "'model' must be a non-empty string",
        )),
        None => Err(ApiError::invalid(
            "model",
            "'model' is required (GET /v1/models lists them)",
        )),
    }
}

fn number(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(key, format!("'{key}' must be a number"))),
    }
}

fn count(o: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            ApiError::invalid(key, format!("'{key}' must be a non-negative integer"))
        }),
    }
}

fn flag(o: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be true or false"),
        )),
    }
}

fn sampling(o: &Map<String, Value>, max_keys: &[&str]) -> Result<Sampling, ApiError> {
    let mut max_tokens = None;
    for k in max_keys {
        if let Some(m) = count(o, k)? {
            max_tokens = Some(m);
        }
    }
    let temperature = number(o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("'temperature' must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = number(o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("'top_p' must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match o.get("top_k") {
        // -1 is how some clients say "off".
        Some(Value::Number(n)) if n.as_i64() == Some(-1) => 0,
        _ => count(o, "top_k")?.unwrap_or(0),
    };
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|x| x as u64))
                .ok_or_else(|| ApiError::invalid("seed", "'seed' must be an integer"))?,
        ),
    };
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(String::from)).collect();
            let v = v.ok_or_else(|| {
                ApiError::invalid("stop", "'stop' must be a string or a list of strings")
            })?;
            if v.len() > 4 {
                return Err(ApiError::invalid("stop", "'stop' takes at most 4 strings"));
            }
            v
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or a list of strings",
            ))
        }
    };
    if let Some(n) = count(o, "n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("only n = 1 is served, got {n}"),
            ));
        }
    }
    Ok(Sampling {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        seed,
        stop,
        stream: flag(o, "stream")?,
        ignore_eos: flag(o, "ignore_eos")?,
    })
}

fn ids_of(a: &[Value]) -> Option<Vec<u32>> {
    a.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&t| t <= u32::MAX as u64)
                .map(|t| t as u32)
        })
        .collect()
}

fn prompts(v: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, a list of strings, a list of token ids or a list of \
             token-id lists",
        )
    };
    let out = match v {
        None => return Err(ApiError::invalid("prompt", "'prompt' is required")),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => return Err(bad()),
        Some(Value::Array(a)) if a[0].is_number() => vec![Prompt::Ids(ids_of(a).ok_or_else(bad)?)],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(ids) => ids_of(ids).map(Prompt::Ids).ok_or_else(bad),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if out.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "at most {MAX_PROMPTS} prompts per request, got {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

impl CompletionRequest {
    pub fn parse(v: &Value) -> Result<CompletionRequest, ApiError> {
        let o = object(v)?;
        let logprobs = match o.get("logprobs") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    ApiError::invalid("logprobs", "'logprobs' must be an integer from 0 to 20")
                })? as usize;
                if n > MAX_LOGPROBS {
                    return Err(ApiError::invalid(
                        "logprobs",
                        format!("'logprobs' must be at most {MAX_LOGPROBS}, got {n}"),
                    ));
                }
                Some(n)
            }
        };
        Ok(CompletionRequest {
            model: model_of(o)?,
            prompts: prompts(o.get("prompt"))?,
            sampling: sampling(o, &["max_tokens"])?,
            logprobs,
            echo: flag(o, "echo")?,
        })
    }
}

impl ChatRequest {
    pub fn parse(v: &Value) -> Result<ChatRequest, ApiError> {
        let o = object(v)?;
        let bad = |m: &str| ApiError::invalid("messages", m.to_string());
        let msgs = o
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("'messages' must be a non-empty list of {role, content}"))?;
        if msgs.is_empty() {
            return Err(bad(
                "'messages' must be a non-empty list of {role, content}",
            ));
        }
        let mut messages = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "each message needs a 'role'",
                )
            })?;
            if !matches!(role, "system" | "user" | "assistant" | "developer") {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("unknown role '{role}': use system, user or assistant"),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // [{"type": "text", "text": ...}, ...]
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content"),
                                    "only text content parts are served",
                                ))
                            }
                        }
                    }
                    s
                }
                Some(Value::Null) | None if role == "assistant" => String::new(),
                _ => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content"),
                        "'content' must be a string",
                    ))
                }
            };
            let role = if role == "developer" { "system" } else { role };
            messages.push(Message::new(role, &content));
        }
        let wanted = match o.get("logprobs") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    "'logprobs' must be true or false",
                ))
            }
        };
        let top = match o.get("top_logprobs") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n as usize <= MAX_LOGPROBS => Some(n as usize),
                _ => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        format!("'top_logprobs' must be an integer from 0 to {MAX_LOGPROBS}"),
                    ))
                }
            },
        };
        if top.is_some() && !wanted {
            return Err(ApiError::invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            ));
        }
        let sampling = sampling(o, &["max_tokens", "max_completion_tokens"])?;
        if wanted && sampling.stream {
            return Err(ApiError::invalid(
                "logprobs",
                "chat logprobs are served without 'stream' (they are computed when the answer is done)",
            ));
        }
        Ok(ChatRequest {
            model: model_of(o)?,
            messages,
            sampling,
            logprobs: wanted.then(|| top.unwrap_or(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_prompts_in_every_form() {
        let p = |v: Value| CompletionRequest::parse(&json!({"model": "m", "prompt": v}));
        assert_eq!(
            p(json!("hi")).unwrap().prompts,
            vec![Prompt::Text("hi".into())]
        );
        assert_eq!(
            p(json!(["a", "b"])).unwrap().prompts,
            vec![Prompt::Text("a".into()), Prompt::Text("b".into())]
        );
        assert_eq!(
            p(json!([1, 2, 3])).unwrap().prompts,
            vec![Prompt::Ids(vec![1, 2, 3])]
        );
        assert_eq!(
            p(json!([[1, 2], [3]])).unwrap().prompts,
            vec![Prompt::Ids(vec![1, 2]), Prompt::Ids(vec![3])]
        );
        for bad in [
            json!([]),
            json!(5),
            json!([1, "a"]),
            json!([-1]),
            json!([{"x": 1}]),
        ] {
            let e = p(bad.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some("prompt")),
                "{bad}"
            );
        }
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let base = json!({"model": "m", "prompt": "x"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            CompletionRequest::parse(&b)
        };
        let r = with("logprobs", json!(5)).unwrap();
        assert_eq!(r.logprobs, Some(5));
        assert_eq!(r.sampling.temperature, 1.0);
        for (k, v) in [
            ("temperature", json!(3)),
            ("temperature", json!("hot")),
            ("top_p", json!(0)),
            ("max_tokens", json!(-1)),
            ("logprobs", json!(21)),
            ("n", json!(2)),
            ("stop", json!([1])),
            ("echo", json!("yes")),
            ("seed", json!("s")),
        ] {
            let e = with(k, v.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(k), "{k} = {v}: {e:?}");
            assert_eq!(e.status, 400);
        }
        assert_eq!(with("top_k", json!(-1)).unwrap().sampling.top_k, 0);
        assert_eq!(with("stop", json!("\n")).unwrap().sampling.stop, vec!["\n"]);
        let e = CompletionRequest::parse(&json!({"prompt": "x"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(CompletionRequest::parse(&json!([1])).is_err());
    }

    #[test]
    fn chat_messages() {
        let r = ChatRequest::parse(
            &json!({"model": "m", "max_completion_tokens": 7, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ]}),
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[1].content, "hi");
        assert_eq!(r.sampling.max_tokens, Some(7));
        for bad in [
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
        ] {
            let e = ChatRequest::parse(&bad).unwrap_err();
            assert!(e.param.unwrap().starts_with("messages"), "{bad}");
        }
        let body = ApiError::not_found("x", "a, b").body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
    }
}
