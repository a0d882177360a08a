//! `fhirlake datastore ...`: the control-plane operations from the command line.
//!
//! Each subcommand builds the operation's request exactly as an AWS SDK would, runs it through
//! the same [`dispatch`] as `POST /`, and prints the response: the JSON body unchanged with
//! `--output json`, or a short table. Operations run in-process on the installation; those that
//! finish in the background (a create with preload, a delete) are waited for, so the command
//! returns once the data store is ACTIVE or DELETED.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use super::operation::Operation;
use super::requests::DatastoreIdRequest;
use super::wire::dispatch;
use super::{ControlError, ControlPlane};

/// How a response is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns (lists) or `key: value` lines.
    Table,
    /// The operation's response body, as the AWS API returns it.
    Json,
}

/// A control-plane operation.
#[derive(Debug, clap::Subcommand)]
pub enum DatastoreCommand {
    /// CreateFHIRDatastore; waits until the data store is ACTIVE (after the preload).
    Create {
        /// DatastoreName (its SQL schema name is derived from it).
        #[arg(long)]
        name: Option<String>,
        /// Load the shipped Synthea sample (PreloadDataType SYNTHEA).
        #[arg(long, value_parser = ["synthea", "SYNTHEA"])]
        preload: Option<String>,
        /// A tag KEY=VALUE; repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Idempotency token: a second create with the same token returns the first store.
        #[arg(long)]
        client_token: Option<String>,
    },
    /// DescribeFHIRDatastore.
    Describe { id: String },
    /// ListFHIRDatastores.
    List {
        /// Only data stores with this DatastoreName.
        #[arg(long)]
        name: Option<String>,
        /// Only data stores in this status (CREATING, ACTIVE, DELETING, DELETED).
        #[arg(long)]
        status: Option<String>,
    },
    /// DeleteFHIRDatastore; waits until the data store is DELETED.
    Delete { id: String },
    /// TagResource: adds or replaces tags.
    Tag {
        id: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        tags: Vec<String>,
    },
    /// UntagResource: removes tags by key.
    Untag {
        id: String,
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// ListTagsForResource.
    Tags { id: String },
}

fn parse_tags(tags: &[String]) -> Result<Vec<Value>, ControlError> {
    tags.iter()
        .map(|t| {
            let (k, v) = t.split_once('=').ok_or_else(|| {
                ControlError::Validation(format!("tag '{t}' is not of the form KEY=VALUE"))
            })?;
            Ok(json!({"Key": k, "Value": v}))
        })
        .collect()
}

/// The operation name and request body of a command.
fn request(
    control: &ControlPlane,
    cmd: &DatastoreCommand,
) -> Result<(Operation, Value), ControlError> {
    Ok(match cmd {
        DatastoreCommand::Create {
            name,
            preload,
            tags,
            client_token,
        } => {
            let mut req = json!({"DatastoreTypeVersion": "R4"});
            if let Some(n) = name {
                req["DatastoreName"] = json!(n);
            }
            if preload.is_some() {
                req["PreloadDataConfig"] = json!({"PreloadDataType": "SYNTHEA"});
            }
            if !tags.is_empty() {
                req["Tags"] = json!(parse_tags(tags)?);
            }
            if let Some(t) = client_token {
                req["ClientToken"] = json!(t);
            }
            (Operation::CreateDatastore, req)
        }
        DatastoreCommand::Describe { id } => {
            (Operation::DescribeDatastore, json!({"DatastoreId": id}))
        }
        DatastoreCommand::List { name, status } => {
            let mut filter = serde_json::Map::new();
            if let Some(n) = name {
                filter.insert("DatastoreName".into(), json!(n));
            }
            if let Some(s) = status {
                filter.insert("DatastoreStatus".into(), json!(s.to_uppercase()));
            }
            let req = if filter.is_empty() {
                json!({})
            } else {
                json!({"Filter": filter})
            };
            (Operation::ListDatastores, req)
        }
        DatastoreCommand::Delete { id } => (Operation::DeleteDatastore, json!({"DatastoreId": id})),
        DatastoreCommand::Tag { id, tags } => (
            Operation::TagResource,
            json!({"ResourceARN": control.arn(id), "Tags": parse_tags(tags)?}),
        ),
        DatastoreCommand::Untag { id, keys } => (
            Operation::UntagResource,
            json!({"ResourceARN": control.arn(id), "TagKeys": keys}),
        ),
        DatastoreCommand::Tags { id } => (
            Operation::ListTagsForResource,
            json!({"ResourceARN": control.arn(id)}),
        ),
    })
}

/// Polls until data store `id` leaves status `from`; returns the status it reached.
async fn wait_while(
    control: &ControlPlane,
    id: &str,
    from: &str,
    host: &str,
) -> Result<String, ControlError> {
    loop {
        let out = control
            .describe_datastore(
                &DatastoreIdRequest {
                    datastore_id: id.to_string(),
                },
                host,
            )
            .await?;
        let status = out["DatastoreProperties"]["DatastoreStatus"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status != from {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one command and prints its response to `out`; `host` is the address shown in
/// endpoints. Errors come back with the operation's AWS error type in the message.
pub async fn run(
    control: &ControlPlane,
    cmd: &DatastoreCommand,
    output: Output,
    host: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (operation, req) = request(control, cmd)?;
    let response = dispatch(control, operation, &req, host)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.type_name()))?;
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&response)?)?,
        Output::Table => print_table(&response, out)?,
    }
    // Finish what the operation started in the background before the process exits.
    let id = response["DatastoreId"].as_str().unwrap_or_default();
    let waited = match (cmd, response["DatastoreStatus"].as_str()) {
        (DatastoreCommand::Create { .. }, Some("CREATING")) => {
            Some(wait_while(control, id, "CREATING", host).await?)
        }
        (DatastoreCommand::Delete { .. }, Some("DELETING")) => {
            Some(wait_while(control, id, "DELETING", host).await?)
        }
        _ => None,
    };
    if let Some(status) = waited {
        eprintln!("data store {id} is now {status}");
        if status != "ACTIVE" && status != "DELETED" {
            anyhow::bail!(
                "data store {id} ended {status}; `fhirlake datastore describe {id}` shows why"
            );
        }
    }
    Ok(())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => match n.as_f64() {
            // Timestamps are epoch seconds on the wire; show them as dates.
            Some(f) if f > 1e9 => chrono::DateTime::from_timestamp_millis((f * 1000.0) as i64)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| n.to_string()),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn print_table(response: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(list) = response["DatastorePropertiesList"].as_array() {
        let columns = [
            "DatastoreId",
            "DatastoreName",
            "DatastoreStatus",
            "CreatedAt",
        ];
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| columns.iter().map(|c| scalar(&p[*c])).collect())
            .collect();
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        writeln!(out, "{}", line(columns.to_vec()).trim_end())?;
        for r in &rows {
            writeln!(
                out,
                "{}",
                line(r.iter().map(String::as_str).collect()).trim_end()
            )?;
        }
        return Ok(());
    }
    if let Some(tags) = response["Tags"].as_array() {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|t| (scalar(&t["Key"]), scalar(&t["Value"])))
            .collect();
        for (k, v) in tags {
            writeln!(out, "{k}={v}")?;
        }
        return Ok(());
    }
    let body = response
        .get("DatastoreProperties")
        .unwrap_or(response)
        .as_object();
    for (k, v) in body.into_iter().flatten() {
        writeln!(out, "{k}: {}", scalar(v))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_need_a_key_and_value() {
        assert_eq!(
            parse_tags(&["a=b".into(), "c=".into()]).unwrap(),
            vec![
                json!({"Key": "a", "Value": "b"}),
                json!({"Key": "c", "Value": ""})
            ]
        );
        assert!(parse_tags(&["novalue".into()]).is_err());
    }

    #[test]
    fn lists_print_as_aligned_columns() {
        let response = json!({"DatastorePropertiesList": [
            {"DatastoreId": "abc", "DatastoreName": "cohort", "DatastoreStatus": "ACTIVE", "CreatedAt": 1.7e9},
        ]});
        let mut out = Vec::new();
        print_table(&response, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DatastoreId  DatastoreName  DatastoreStatus"));
        assert!(lines[1].contains("cohort") && lines[1].contains("2023-11-14T22:13:20Z"));
    }
}
