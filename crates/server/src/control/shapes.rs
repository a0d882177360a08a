//! Reading and checking request members the way the AWS HealthLake API model defines them,
//! with its ValidationException wording (`1 validation error detected: Value ... at ...`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ControlError;
use super::records::{CmkType, DatastoreState, KmsEncryptionConfig, SseConfiguration};

/// Most tags on one resource (the guide: fifty).
pub const MAX_TAGS: usize = 50;

/// Most items a list call returns, and its default.
pub const MAX_RESULTS: usize = 500;

pub fn object(req: &Value) -> Result<&Map<String, Value>, ControlError> {
    req.as_object()
        .ok_or_else(|| ControlError::Validation("The request body must be a JSON object".into()))
}

pub fn missing(member: &str) -> ControlError {
    ControlError::Validation(format!(
        "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member \
         must not be null",
        lower_first(member)
    ))
}

/// AWS messages name members in camelCase.
fn lower_first(member: &str) -> String {
    let mut c = member.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn constraint(member: &str, value: &str, rule: &str) -> ControlError {
    ControlError::Validation(format!(
        "1 validation error detected: Value '{value}' at '{}' failed to satisfy constraint: {rule}",
        lower_first(member)
    ))
}

pub fn required_str<'a>(
    req: &'a Map<String, Value>,
    member: &str,
) -> Result<&'a str, ControlError> {
    match req.get(member) {
        None | Some(Value::Null) => Err(missing(member)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(constraint(
            member,
            &other.to_string(),
            "Member must be a string",
        )),
    }
}

/// A data store or job id: 32 lower-case hex characters here (anything else cannot exist).
pub fn check_id(member: &str, id: &str) -> Result<(), ControlError> {
    if id.is_empty() || id.len() > 32 {
        return Err(constraint(
            member,
            id,
            "Member must have length between 1 and 32",
        ));
    }
    Ok(())
}

/// HealthLake's name pattern: letters, separators, digits and `_ . : / = + - % @`.
fn name_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-%@".contains(c))
}

/// A DatastoreName or JobName.
pub fn name_field(member: &str, v: &Value, max: usize) -> Result<String, ControlError> {
    let s = v
        .as_str()
        .ok_or_else(|| constraint(member, &v.to_string(), "Member must be a string"))?;
    name(member, s, max)
}

/// A DatastoreName or JobName given as text.
pub fn name(member: &str, s: &str, max: usize) -> Result<String, ControlError> {
    let len = s.chars().count();
    if len == 0 || len > max {
        return Err(constraint(
            member,
            s,
            &format!("Member must have length between 1 and {max}"),
        ));
    }
    if !name_chars_ok(s) {
        return Err(constraint(
            member,
            s,
            "Member must satisfy regular expression pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-%@]*",
        ));
    }
    Ok(s.to_string())
}

/// ClientToken: 1-64 of `[a-zA-Z0-9-]`.
pub fn client_token(req: &Map<String, Value>) -> Result<Option<String>, ControlError> {
    match req.get("ClientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = v.as_str().unwrap_or_default();
            if s.is_empty()
                || s.len() > 64
                || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(constraint(
                    "ClientToken",
                    &v.to_string(),
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9-]+",
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

/// SseConfiguration, recorded after checking its shape (encryption at rest is the file
/// system's business here).
pub fn sse(v: &Value) -> Result<SseConfiguration, ControlError> {
    let config = &v["KmsEncryptionConfig"];
    let cmk_type = match config["CmkType"].as_str() {
        Some("AWS_OWNED_KMS_KEY") => CmkType::AwsOwnedKmsKey,
        Some("CUSTOMER_MANAGED_KMS_KEY") => CmkType::CustomerManagedKmsKey,
        Some(other) => {
            return Err(constraint(
                "SseConfiguration.KmsEncryptionConfig.CmkType",
                other,
                "Member must satisfy enum value set: [CUSTOMER_MANAGED_KMS_KEY, \
                 AWS_OWNED_KMS_KEY]",
            ));
        }
        None => return Err(missing("SseConfiguration.KmsEncryptionConfig.CmkType")),
    };
    let kms_key_id = match &config["KmsKeyId"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => {
            return Err(constraint(
                "SseConfiguration.KmsEncryptionConfig.KmsKeyId",
                &other.to_string(),
                "Member must be a string",
            ));
        }
    };
    Ok(SseConfiguration {
        kms_encryption_config: KmsEncryptionConfig {
            cmk_type,
            kms_key_id,
        },
    })
}

/// A tag list with the guide's rules: keys 1-128, values 0-256, the allowed characters,
/// no `aws:` prefix, unique keys, at most 50.
pub fn tags(v: &Value) -> Result<BTreeMap<String, String>, ControlError> {
    let list = v
        .as_array()
        .ok_or_else(|| ControlError::Validation("Tags must be a list of {Key, Value}".into()))?;
    let mut pairs = Vec::with_capacity(list.len());
    for tag in list {
        let key = tag["Key"]
            .as_str()
            .ok_or_else(|| missing("Tags.member.Key"))?;
        let value = tag["Value"]
            .as_str()
            .ok_or_else(|| missing("Tags.member.Value"))?;
        pairs.push((key, value));
    }
    tag_map(pairs)
}

/// Tags given as (key, value) pairs, checked with the rules of [`tags`].
pub fn tag_map<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<String, String>, ControlError> {
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        let key_len = key.chars().count();
        if key_len == 0 || key_len > 128 {
            return Err(constraint(
                "Tags.member.Key",
                key,
                "Member must have length between 1 and 128",
            ));
        }
        if value.chars().count() > 256 {
            return Err(constraint(
                "Tags.member.Value",
                value,
                "Member must have length less than or equal to 256",
            ));
        }
        for (member, s) in [("Tags.member.Key", key), ("Tags.member.Value", value)] {
            if !s
                .chars()
                .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
            {
                return Err(constraint(
                    member,
                    s,
                    "Member must satisfy regular expression pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*",
                ));
            }
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ControlError::Validation(format!(
                "Tag key '{key}' uses the reserved prefix 'aws:'"
            )));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ControlError::Validation(format!(
                "Tag key '{key}' appears more than once"
            )));
        }
    }
    if out.len() > MAX_TAGS {
        return Err(ControlError::Validation(format!(
            "A resource can have at most {MAX_TAGS} tags; {} were given",
            out.len()
        )));
    }
    Ok(out)
}

pub fn datastore_status(s: &str) -> Result<DatastoreState, ControlError> {
    DatastoreState::from_name(s).ok_or_else(|| {
        constraint(
            "Filter.DatastoreStatus",
            s,
            "Member must satisfy enum value set: [CREATING, ACTIVE, DELETING, DELETED, \
             CREATE_FAILED]",
        )
    })
}

/// A timestamp member: epoch seconds (what SDKs send in the JSON protocol) or RFC 3339.
pub fn optional_time(v: &Value, member: &str) -> Result<Option<f64>, ControlError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis() as f64 / 1000.0))
            .map_err(|_| constraint(member, s, "Member must be a timestamp")),
        other => Err(constraint(
            member,
            &other.to_string(),
            "Member must be a timestamp",
        )),
    }
}

/// `(offset, max)` from NextToken and MaxResults (1-500).
pub fn page(req: &Map<String, Value>) -> Result<(usize, usize), ControlError> {
    let max = match req.get("MaxResults") {
        None | Some(Value::Null) => MAX_RESULTS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_RESULTS as u64).contains(&n) => n as usize,
            _ => {
                return Err(constraint(
                    "MaxResults",
                    &v.to_string(),
                    "Member must have value between 1 and 500",
                ));
            }
        },
    };
    let offset = match req.get("NextToken") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_str()
            .and_then(|t| t.strip_prefix("offset-"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ControlError::Validation("Invalid NextToken".into()))?,
    };
    Ok((offset, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tag_rules() {
        let ok = tags(&json!([{"Key": "key1", "Value": "value 1"}, {"Key": "k:2", "Value": ""}]))
            .unwrap();
        assert_eq!(ok.len(), 2);
        for bad in [
            json!([{"Key": "aws:x", "Value": "v"}]),
            json!([{"Key": "a".repeat(129), "Value": "v"}]),
            json!([{"Key": "k", "Value": "v".repeat(257)}]),
            json!([{"Key": "k#", "Value": "v"}]),
            json!([{"Key": "k", "Value": "v"}, {"Key": "k", "Value": "w"}]),
            json!([{"Key": "", "Value": "v"}]),
        ] {
            assert!(tags(&bad).is_err(), "{bad}");
        }
        let many: Vec<Value> = (0..51)
            .map(|i| json!({"Key": format!("k{i}"), "Value": "v"}))
            .collect();
        assert!(tags(&Value::Array(many)).is_err());
    }

    #[test]
    fn pages_are_bounded() {
        let (offset, max) = page(
            json!({"NextToken": "offset-4", "MaxResults": 2})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((offset, max), (4, 2));
        assert!(page(json!({"MaxResults": 501}).as_object().unwrap()).is_err());
        assert!(page(json!({"MaxResults": 0}).as_object().unwrap()).is_err());
        assert!(page(json!({"NextToken": "x"}).as_object().unwrap()).is_err());
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(name_field("DatastoreName", &json!("Test_Data_Store"), 256).is_ok());
        assert!(name_field("DatastoreName", &json!("a#b"), 256).is_err());
        assert!(name_field("DatastoreName", &json!(""), 256).is_err());
    }
}
