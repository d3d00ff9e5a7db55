//! The built-in sandbox responder (G5): what test keys reach when an API has
//! no test upstream. Answers are deterministic (the same request gives the
//! same content), shaped like OpenAI's so SDKs parse them, and count tokens
//! the way the gateway bills them: about four characters per token in, one
//! token per word out.

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What the sandbox produced for one call.
pub struct Answer {
    pub body: Value,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// For streaming requests: the server-sent events, `[DONE]` included.
    pub events: Vec<Bytes>,
}

pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// The text of a message `content` (a string or a list of parts).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn snippet(text: &str) -> String {
    let clean: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if clean.chars().count() > 80 {
        format!("{}…", clean.chars().take(80).collect::<String>())
    } else {
        clean
    }
}

fn short_hash(v: &[u8]) -> String {
    Sha256::digest(v)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn max_tokens(body: &Value) -> Option<u64> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
}

/// The words of the reply, cut at `max_tokens`; and whether it was cut.
fn reply_words(reply: &str, limit: Option<u64>) -> (Vec<String>, bool) {
    let words: Vec<&str> = reply.split(' ').collect();
    let keep = limit.map_or(words.len(), |l| (l as usize).min(words.len()));
    let out = words[..keep]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    (out, keep < words.len())
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

fn wants_usage_in_stream(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn usage(tokens_in: u64, tokens_out: u64) -> Value {
    json!({"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
           "total_tokens": tokens_in + tokens_out})
}

/// `/v1/chat/completions`.
pub fn chat(body: &Value, model: &str, created: i64, stream: bool) -> Answer {
    let messages = body.get("messages").and_then(Value::as_array);
    let texts: Vec<(String, String)> = messages
        .map(|m| {
            m.iter()
                .map(|msg| {
                    let role = msg.get("role").and_then(Value::as_str).unwrap_or("user");
                    (
                        role.to_owned(),
                        text_of(msg.get("content").unwrap_or(&Value::Null)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let chars: usize = texts.iter().map(|(_, t)| t.chars().count()).sum();
    let last_user = texts
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map(|(_, t)| t.as_str())
        .unwrap_or("");
    let reply = format!(
        "This is a sandbox reply from {model}. You said: \"{}\"",
        snippet(last_user)
    );
    let (words, cut) = reply_words(&reply, max_tokens(body));
    let content: String = words.concat();
    let tokens_in = estimate_tokens(chars);
    let tokens_out = words.len() as u64;
    let id = format!(
        "chatcmpl-sandbox-{}",
        short_hash(body.to_string().as_bytes())
    );
    let finish = if cut { "length" } else { "stop" };
    let full = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": "tally-sandbox",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": finish}],
        "usage": usage(tokens_in, tokens_out),
    });
    let mut events = Vec::new();
    if stream {
        let chunk = |delta: Value, finish: Value| {
            sse(
                &json!({"id": id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "system_fingerprint": "tally-sandbox",
                        "choices": [{"index": 0, "delta": delta, "logprobs": null,
                                     "finish_reason": finish}]}),
            )
        };
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        for w in &words {
            events.push(chunk(json!({"content": w}), Value::Null));
        }
        events.push(chunk(json!({}), json!(finish)));
        if wants_usage_in_stream(body) {
            events.push(sse(&json!({"id": id, "object": "chat.completion.chunk",
                                    "created": created, "model": model, "choices": [],
                                    "usage": usage(tokens_in, tokens_out)})));
        }
        events.push(done());
    }
    Answer {
        body: full,
        tokens_in,
        tokens_out,
        events,
    }
}

/// `/v1/completions` (the legacy text API).
pub fn completion(body: &Value, model: &str, created: i64, stream: bool) -> Answer {
    let prompt = match body.get("prompt") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(v) => text_of(v),
        None => String::new(),
    };
    let reply = format!(
        "This is a sandbox completion from {model} for: \"{}\"",
        snippet(&prompt)
    );
    let (words, cut) = reply_words(&reply, max_tokens(body));
    let tokens_in = estimate_tokens(prompt.chars().count());
    let tokens_out = words.len() as u64;
    let id = format!("cmpl-sandbox-{}", short_hash(body.to_string().as_bytes()));
    let finish = if cut { "length" } else { "stop" };
    let full = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": words.concat(), "logprobs": null,
                     "finish_reason": finish}],
        "usage": usage(tokens_in, tokens_out),
    });
    let mut events = Vec::new();
    if stream {
        let n = words.len();
        for (i, w) in words.iter().enumerate() {
            let finish = if i + 1 == n {
                json!(finish)
            } else {
                Value::Null
            };
            events.push(sse(
                &json!({"id": id, "object": "text_completion", "created": created,
                "model": model, "choices": [{"index": 0, "text": w, "logprobs": null,
                "finish_reason": finish}]}),
            ));
        }
        if wants_usage_in_stream(body) {
            events.push(sse(
                &json!({"id": id, "object": "text_completion", "created": created,
                "model": model, "choices": [], "usage": usage(tokens_in, tokens_out)}),
            ));
        }
        events.push(done());
    }
    Answer {
        body: full,
        tokens_in,
        tokens_out,
        events,
    }
}

/// A deterministic unit vector for `input`.
fn vector(input: &str, dims: usize) -> Vec<f32> {
    let seed = Sha256::digest(input.as_bytes());
    let mut state = u64::from_le_bytes(seed[..8].try_into().unwrap_or([7; 8])) | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            // xorshift64*: plenty for fake vectors, and the same everywhere.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `/v1/embeddings`.
pub fn embeddings(body: &Value, model: &str) -> Answer {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(16, |d| d.clamp(1, 4096) as usize);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens_in: u64 = inputs
        .iter()
        .map(|t| estimate_tokens(t.chars().count()))
        .sum();
    Answer {
        body: json!({"object": "list", "data": data, "model": model,
                     "usage": {"prompt_tokens": tokens_in, "total_tokens": tokens_in}}),
        tokens_in,
        tokens_out: 0,
        events: Vec::new(),
    }
}

/// Any other API: echoes the request so integrations can be tested.
pub fn echo(slug: &str, method: &str, path: &str, query: &str, body: &[u8]) -> Answer {
    let parsed = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    Answer {
        body: json!({"sandbox": true, "api": slug, "method": method, "path": path,
                     "query": query, "body": parsed}),
        tokens_in: 0,
        tokens_out: 0,
        events: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn chat_is_deterministic_and_the_stream_carries_the_same_text() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hello there"}],
                          "stream_options": {"include_usage": true}});
        let a = chat(&body, "m", 1, true);
        let b = chat(&body, "m", 1, false);
        assert_eq!(a.body, b.body);
        let content = b.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(content.contains("Hello there"));
        let streamed: String = a
            .events
            .iter()
            .filter_map(|e| {
                let s = std::str::from_utf8(e)
                    .unwrap()
                    .trim()
                    .strip_prefix("data: ")?;
                let v: Value = serde_json::from_str(s).ok()?;
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(streamed, content);
        assert_eq!(a.tokens_out, content.split(' ').count() as u64);
        assert_eq!(a.tokens_in, 3);
        assert!(std::str::from_utf8(a.events.last().unwrap())
            .unwrap()
            .contains("[DONE]"));
    }

    #[test]
    fn max_tokens_cuts_the_reply() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
        let a = chat(&body, "m", 1, false);
        assert_eq!(a.tokens_out, 3);
        assert_eq!(a.body["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn embeddings_are_unit_vectors_and_base64_decodes_to_the_same() {
        let floats = embeddings(&json!({"input": ["a", "b"]}), "e");
        let v: Vec<f32> =
            serde_json::from_value(floats.body["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(v.len(), 16);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let b64 = embeddings(&json!({"input": "a", "encoding_format": "base64"}), "e");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.body["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, v);
    }
}
