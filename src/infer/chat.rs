//! Chat prompts: the model's chat template (tokenizer_config.json
//! `chat_template`, Jinja) rendered with minijinja as transformers'
//! `apply_chat_template` does (trim_blocks, lstrip_blocks, `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`,
//! `strftime_now`, Python string methods through minijinja-contrib's
//! pycompat). A base model without a template continues plain text: the
//! conversation is one running document.
//!
//! Long conversations are trimmed from the oldest turns (a leading system
//! message stays) so that the prompt plus the answer fit the context.

use minijinja::{context, Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn user(content: &str) -> Self {
        Message::new("user", content)
    }
    pub fn assistant(content: &str) -> Self {
        Message::new("assistant", content)
    }
}

/// minijinja instructions one render of a chat template may execute.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// The largest `tojson(indent=N)` a chat template may ask for.
const MAX_JSON_INDENT: i64 = 64;

/// A compiled chat template and the special-token strings it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

/// `strftime_now(fmt)` (Llama 3.x templates): today's UTC date with the
/// common directives %d %m %Y %y %b %B %H %M %S %j %%.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(fmt.as_str(), secs)
}

/// Format UNIX time `secs` (UTC) with a few strftime directives.
pub fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + (leap && m > 2) as i64;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&format!("{y}")),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Invalid(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        // A template is code from a download: bound the work of one render
        // (a real template spends a few hundred instructions per message)
        // so that a hostile one ends in an error, not a hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        // tojson's indent is spaces per level: bound it (a billion spaces
        // per line is many gigabytes of prompt).
        env.add_filter(
            "tojson",
            |value: &Value,
             indent: Option<Value>,
             args: minijinja::value::Kwargs|
             -> std::result::Result<Value, minijinja::Error> {
                let given = match &indent {
                    Some(v) => Some(v.clone()),
                    None => args.peek::<Option<Value>>("indent")?,
                };
                if let Some(n) = given.as_ref().and_then(Value::as_i64) {
                    if n > MAX_JSON_INDENT {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson indent {n} is too large (at most {MAX_JSON_INDENT})"),
                        ));
                    }
                }
                minijinja::filters::tojson(value, indent, args)
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Invalid(format!("the chat template does not parse: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of a tokenizer (None when it has none), with its BOS
    /// and EOS strings.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
        let Some(src) = tok.chat_template.as_deref() else {
            return Ok(None);
        };
        let name = |id: Option<u32>| match id {
            Some(i) => tok.decode(&[i], false),
            None => Ok(String::new()),
        };
        let bos = name(tok.bos_id)?;
        let eos = name(tok.eos_ids.last().copied())?;
        ChatTemplate::new(src, &bos, &eos).map(Some)
    }

    /// The prompt text for `messages`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut o = std::collections::BTreeMap::new();
                o.insert("role", Value::from(m.role.as_str()));
                o.insert("content", Value::from(m.content.as_str()));
                Value::from(o)
            })
            .collect();
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Invalid(format!("chat template: {e}")))?;
        t.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| {
            let mut msg = format!("rendering the chat template failed: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Error::Invalid(msg)
        })
    }
}

/// Plain continuation for models without a template: the turns joined into
/// one document, each user turn after the first on a new line.
pub fn plain_text(messages: &[Message]) -> String {
    let mut s = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && m.role != "assistant" && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&m.content);
    }
    s
}

/// Token ids of the prompt for `messages`.
pub fn encode_prompt(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    messages: &[Message],
) -> Result<Vec<u32>> {
    match template {
        // apply_chat_template tokenises without adding special tokens: the
        // template writes them.
        Some(t) => tok.encode(&t.render(messages, true)?, false),
        None => tok.encode(&plain_text(messages), true),
    }
}

/// The prompt for a conversation, dropping the oldest turns (a leading
/// system message stays; a user turn goes with the answer after it) until
/// it is at most `budget` tokens. Returns the ids and the number of
/// messages dropped from `messages`' front (after the system message).
/// A prompt that still exceeds `hard_limit` tokens is an error.
pub fn fit_prompt(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    messages: &[Message],
    budget: usize,
    hard_limit: usize,
) -> Result<(Vec<u32>, usize)> {
    let sys = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut dropped = 0;
    loop {
        let mut kept: Vec<Message> = messages[..sys].to_vec();
        kept.extend_from_slice(&messages[sys + dropped..]);
        let ids = encode_prompt(tok, template, &kept)?;
        let rest = messages.len() - sys - dropped;
        if ids.len() <= budget || rest <= 1 {
            if ids.len() > hard_limit {
                return Err(Error::Invalid(format!(
                    "the prompt is {} tokens, more than the context of {hard_limit} tokens; shorten it or raise --max-context",
                    ids.len()
                )));
            }
            return Ok((ids, dropped));
        }
        // Drop the oldest turn: a user message and the reply after it.
        let first = &messages[sys + dropped];
        dropped += 1;
        if first.role == "user"
            && messages.len() - sys - dropped > 1
            && messages[sys + dropped].role == "assistant"
        {
            dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen-style ChatML with string methods and loop controls.
    const CHATML: &str = "{%- for message in messages %}{%- if message.role == 'system' and not loop.first %}{{ raise_exception('system first') }}{%- endif %}<|im_start|>{{ message.role }}\n{{ message.content.strip() }}<|im_end|>\n{%- if loop.index > 100 %}{% break %}{% endif %}\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let s = t
            .render(
                &[Message::new("system", "Be brief."), Message::user("  Hi! ")],
                true,
            )
            .unwrap();
        // What jinja2 renders with trim_blocks and lstrip_blocks (`{%-`
        // eats the newlines before it).
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi!<|im_end|><|im_start|>assistant"
        );
        let e = t
            .render(&[Message::user("a"), Message::new("system", "late")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("system first"), "{e}");
    }

    #[test]
    fn llama3_style_template_with_bos_and_date() {
        let src = "{{- bos_token }}{%- set date_string = strftime_now('%d %b %Y') %}{%- for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}{{ date_string[:0] }}";
        let t = ChatTemplate::new(src, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let s = t.render(&[Message::user("Hello ")], true).unwrap();
        assert_eq!(s, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    }

    #[test]
    fn strftime_directives() {
        // 2024-02-29 13:05:09 UTC
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %j %B %y %m %%", 1_709_211_909),
            "29 Feb 2024 13:05:09 060 February 24 02 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }

    #[test]
    fn plain_documents() {
        let m = [
            Message::user("Once upon"),
            Message::assistant(" a time"),
            Message::user("Next"),
        ];
        assert_eq!(plain_text(&m), "Once upon a time\nNext");
    }
}
