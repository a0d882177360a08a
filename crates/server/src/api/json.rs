//! JSON text surgery that keeps every value byte for byte.
//!
//! Resources are stored as received, so decimals keep their precision (`1.50` stays `1.50`).
//! Parsing into `serde_json::Value` and printing again would lose that; these helpers edit the
//! text instead: set the top-level `id`, rewrite `urn:uuid:` references, pretty-print.

use std::collections::HashMap;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The members of a JSON object text, values unparsed, in document order.
pub fn object_members(text: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
            while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = (&mut de).deserialize_map(Members)?;
    de.end()?;
    Ok(members)
}

/// The string value of a member, `None` when absent or not a string.
pub fn string_member(members: &[(String, &RawValue)], name: &str) -> Option<String> {
    members
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok())
}

/// Rebuilds an object with `id` set to `id`: an existing `id` member is replaced in place,
/// otherwise it is added right after `resourceType` (FHIR's customary order).
pub fn with_id(members: &[(String, &RawValue)], id: &str) -> String {
    let id_json = serde_json::to_string(id).expect("a string serializes");
    let has_id = members.iter().any(|(k, _)| k == "id");
    let mut out = String::with_capacity(
        members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 16,
    );
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(key).expect("a string serializes"));
        out.push(':');
        out.push_str(value);
    };
    if !has_id && !members.iter().any(|(k, _)| k == "resourceType") {
        push(&mut out, "id", &id_json);
    }
    for (key, value) in members {
        if key == "id" {
            push(&mut out, key, &id_json);
        } else {
            push(&mut out, key, value.get());
            if key == "resourceType" && !has_id {
                push(&mut out, "id", &id_json);
            }
        }
    }
    out.push('}');
    out
}

/// Replaces every `urn:uuid:…` / `urn:oid:…` occurrence whose full text is a key of `map`.
///
/// Such URNs can only occur inside JSON strings (nothing else in JSON may contain a `:`
/// outside strings except member separators), and their characters never need escaping, so
/// a plain text scan rewrites references and narrative links alike. A match must be a whole
/// URN: `urn:uuid:ab` does not match inside `urn:uuid:abc`.
pub fn rewrite_urns(text: &str, map: &HashMap<String, String>) -> Option<String> {
    if map.is_empty() {
        return None;
    }
    let is_urn_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(pos) = text[i..].find("urn:") {
        let start = i + pos;
        let rest = &text[start..];
        let prefix = if rest.starts_with("urn:uuid:") {
            "urn:uuid:".len()
        } else if rest.starts_with("urn:oid:") {
            "urn:oid:".len()
        } else {
            i = start + 4;
            continue;
        };
        let mut end = start + prefix;
        while end < bytes.len() && is_urn_char(bytes[end]) {
            end += 1;
        }
        // A trailing '.' ends a sentence in narrative rather than the URN.
        while end > start + prefix && bytes[end - 1] == b'.' {
            end -= 1;
        }
        if let Some(replacement) = map.get(&text[start..end]) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            o.push_str(replacement);
            copied = end;
        }
        i = end.max(start + prefix);
    }
    out.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

/// Pretty-prints JSON text with two-space indentation, keeping every token's bytes.
///
/// The input must be valid JSON (it always is: stored resources and generated bundles).
pub fn pretty(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(s) = chars.next() {
                    out.push(s);
                    match s {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_id_replaces_or_inserts_and_keeps_values() {
        let text = r#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#;
        let m = object_members(text).unwrap();
        assert_eq!(
            with_id(&m, "x"),
            r#"{"resourceType":"Observation","id":"x","valueQuantity":{"value":1.50}}"#
        );
        let text = r#"{ "id" : "old", "resourceType":"Patient" }"#;
        let m = object_members(text).unwrap();
        assert_eq!(with_id(&m, "n"), r#"{"id":"n","resourceType":"Patient"}"#);
        assert_eq!(
            string_member(&m, "resourceType").as_deref(),
            Some("Patient")
        );
        assert!(object_members("[1]").is_err());
        assert!(object_members(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn urns_are_rewritten_whole() {
        let map = HashMap::from([
            ("urn:uuid:ab".to_string(), "Patient/1".to_string()),
            ("urn:oid:1.2.3".to_string(), "Organization/o".to_string()),
        ]);
        let text = r#"{"a":{"reference":"urn:uuid:ab"},"b":"urn:uuid:abc","c":"see urn:oid:1.2.3.","d":"urn:uuid:ab"}"#;
        assert_eq!(
            rewrite_urns(text, &map).unwrap(),
            r#"{"a":{"reference":"Patient/1"},"b":"urn:uuid:abc","c":"see Organization/o.","d":"Patient/1"}"#
        );
        assert!(rewrite_urns(r#"{"b":"urn:uuid:abc"}"#, &map).is_none());
    }

    #[test]
    fn pretty_keeps_tokens() {
        let text = r#"{"a":[1.50,{"b":"x\"y:{"}],"c":{},"d":[ ]}"#;
        let p = pretty(text);
        assert_eq!(
            p,
            "{\n  \"a\": [\n    1.50,\n    {\n      \"b\": \"x\\\"y:{\"\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(a, b);
    }
}
