//! S3 addressing shared by the lake's warehouse and the jobs' input and output locations.
//!
//! Both reach S3 with the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
//! `AWS_ENDPOINT`, ...): jobs through object_store, which reads it itself, and the warehouse
//! through iceberg's S3 storage, which takes Iceberg's `s3.*` properties; [`iceberg_props`]
//! translates one into the other so both clients address the same bucket the same way.

use std::collections::HashMap;

/// `bucket/key/...` (an `s3://` URI without its scheme) as (bucket, key without leading or
/// trailing slashes), refusing empty, `.` and `..` segments so a key cannot step outside the
/// prefix it names.
pub fn split_uri(rest: &str) -> Result<(String, String), String> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(format!("'{bucket}' is not an S3 bucket name"));
    }
    let key = key.trim_end_matches('/');
    if !key.is_empty()
        && key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("the key may not hold empty, '.' or '..' segments".into());
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// Iceberg S3 properties (`s3.endpoint`, `s3.region`, credentials, path style) from the AWS
/// environment `env` (a lookup, so tests need not touch the process environment).
///
/// Matches object_store's reading of the same variables: the region defaults to us-east-1 and
/// requests are path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` is true, which is what
/// S3-compatible servers (MinIO, moto, Ceph) expect behind an endpoint override. Credentials
/// that are not in the environment are left to the S3 client's own chain (profile, IMDS).
pub fn iceberg_props(env: impl Fn(&str) -> Option<String>) -> HashMap<String, String> {
    let first = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let mut props = HashMap::new();
    let mut set = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            props.insert(key.to_string(), v);
        }
    };
    set("s3.endpoint", first(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]));
    set(
        "s3.region",
        Some(first(&["AWS_REGION", "AWS_DEFAULT_REGION"]).unwrap_or_else(|| "us-east-1".into())),
    );
    set("s3.access-key-id", first(&["AWS_ACCESS_KEY_ID"]));
    set("s3.secret-access-key", first(&["AWS_SECRET_ACCESS_KEY"]));
    set("s3.session-token", first(&["AWS_SESSION_TOKEN"]));
    let virtual_hosted = first(&["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"])
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    set("s3.path-style-access", Some((!virtual_hosted).to_string()));
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_bucket_and_clean_key() {
        assert_eq!(
            split_uri("lake/wh/").unwrap(),
            ("lake".to_string(), "wh".to_string())
        );
        assert_eq!(
            split_uri("lake").unwrap(),
            ("lake".to_string(), String::new())
        );
        assert!(split_uri("UPPER/x").unwrap_err().contains("'UPPER'"));
        assert!(split_uri("lake/a/../b").is_err());
        assert!(split_uri("lake/a//b").is_err());
    }

    #[test]
    fn iceberg_props_follow_the_aws_environment() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let props = iceberg_props(|n| env.get(n).map(|v| v.to_string()));
        assert_eq!(props["s3.endpoint"], "http://127.0.0.1:9000");
        assert_eq!(props["s3.region"], "us-east-1");
        assert_eq!(props["s3.access-key-id"], "k");
        assert_eq!(props["s3.secret-access-key"], "s");
        assert_eq!(props["s3.path-style-access"], "true");
        assert!(!props.contains_key("s3.session-token"));

        let env: HashMap<&str, &str> = HashMap::from([
            ("AWS_ENDPOINT_URL", "https://s3.example"),
            ("AWS_ENDPOINT", "http://ignored"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"),
        ]);
        let props = iceberg_props(|n| env.get(n).map(|v| v.to_string()));
        assert_eq!(props["s3.endpoint"], "https://s3.example");
        assert_eq!(props["s3.region"], "eu-west-1");
        assert_eq!(props["s3.path-style-access"], "false");
    }
}
