//! `fhirlake datastore ...`: the control-plane operations from the command line.
//!
//! Each subcommand builds the operation's typed request (checked with the same rules as the
//! AWS JSON edge), runs it through the same [`ControlPlane::call`] as `POST /`, and prints the
//! typed response: as the AWS API's JSON body with `--output json`, or a short table. Operations run in-process on the installation; those that
//! finish in the background (a create with preload, a delete) are waited for, so the command
//! returns once the data store is ACTIVE or DELETED.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::records::DatastoreState;
use super::requests::{
    CreateDatastoreRequest, DatastoreIdRequest, ListDatastoresRequest, Request, ResourceArnRequest,
    TagResourceRequest, UntagResourceRequest,
};
use super::responses::{EpochSeconds, Response};
use super::{ControlError, ControlPlane, shapes};

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

fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, ControlError> {
    let pairs = tags
        .iter()
        .map(|t| {
            t.split_once('=').ok_or_else(|| {
                ControlError::Validation(format!("tag '{t}' is not of the form KEY=VALUE"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    shapes::tag_map(pairs)
}

fn create_request(
    name: &Option<String>,
    preload: bool,
    tags: &[String],
    client_token: &Option<String>,
) -> Result<CreateDatastoreRequest, ControlError> {
    Ok(CreateDatastoreRequest {
        name: name
            .as_deref()
            .map(|n| shapes::name("DatastoreName", n, 256))
            .transpose()?,
        preload_synthea: preload,
        sse: None,
        identity_provider: None,
        tags: parse_tags(tags)?,
        client_token: client_token.clone(),
    })
}

/// The typed request of a command.
fn request(control: &ControlPlane, cmd: &DatastoreCommand) -> Result<Request, ControlError> {
    let id_request = |id: &String| DatastoreIdRequest {
        datastore_id: id.clone(),
    };
    Ok(match cmd {
        DatastoreCommand::Create {
            name,
            preload,
            tags,
            client_token,
        } => Request::CreateDatastore(create_request(name, preload.is_some(), tags, client_token)?),
        DatastoreCommand::Describe { id } => Request::DescribeDatastore(id_request(id)),
        DatastoreCommand::List { name, status } => Request::ListDatastores(ListDatastoresRequest {
            name: name.clone(),
            status: status
                .as_deref()
                .map(|s| shapes::datastore_status(&s.to_uppercase()))
                .transpose()?,
            ..ListDatastoresRequest::default()
        }),
        DatastoreCommand::Delete { id } => Request::DeleteDatastore(id_request(id)),
        DatastoreCommand::Tag { id, tags } => Request::TagResource(TagResourceRequest {
            resource_arn: control.arn(id),
            tags: parse_tags(tags)?,
        }),
        DatastoreCommand::Untag { id, keys } => Request::UntagResource(UntagResourceRequest {
            resource_arn: control.arn(id),
            tag_keys: keys.clone(),
        }),
        DatastoreCommand::Tags { id } => Request::ListTagsForResource(ResourceArnRequest {
            resource_arn: control.arn(id),
        }),
    })
}

/// Polls until data store `id` leaves status `from`; returns the status it reached.
async fn wait_while(
    control: &ControlPlane,
    id: &str,
    from: DatastoreState,
    host: &str,
) -> Result<DatastoreState, ControlError> {
    let request = DatastoreIdRequest {
        datastore_id: id.to_string(),
    };
    loop {
        let out = control.describe_datastore(&request, host).await?;
        let status = out.datastore_properties.datastore_status;
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
    let fail = |e: ControlError| anyhow::anyhow!("{}: {e}", e.type_name());
    let response = control
        .call(&request(control, cmd).map_err(fail)?, host)
        .await
        .map_err(fail)?;
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&response)?)?,
        Output::Table => print_table(&response, out)?,
    }
    // Finish what the operation started in the background before the process exits.
    let Response::Datastore(started) = &response else {
        return Ok(());
    };
    let id = &started.datastore_id;
    let status = match started.datastore_status {
        from @ (DatastoreState::Creating | DatastoreState::Deleting) => {
            wait_while(control, id, from, host).await.map_err(fail)?
        }
        _ => return Ok(()),
    };
    eprintln!("data store {id} is now {status}");
    if !matches!(status, DatastoreState::Active | DatastoreState::Deleted) {
        anyhow::bail!(
            "data store {id} ended {status}; `fhirlake datastore describe {id}` shows why"
        );
    }
    Ok(())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Lines of aligned columns.
fn print_columns(
    columns: &[&str],
    rows: &[Vec<String>],
    out: &mut dyn Write,
) -> std::io::Result<()> {
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
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(&mut columns.iter().copied()).trim_end())?;
    for r in rows {
        writeln!(
            out,
            "{}",
            line(&mut r.iter().map(String::as_str)).trim_end()
        )?;
    }
    Ok(())
}

/// `key: value` lines of a response's members; times shown as RFC 3339.
fn print_members(members: &impl serde::Serialize, out: &mut dyn Write) -> std::io::Result<()> {
    let value = serde_json::to_value(members).map_err(std::io::Error::other)?;
    for (k, v) in value.as_object().into_iter().flatten() {
        let shown = match (k.as_str(), v.as_f64()) {
            ("CreatedAt" | "SubmitTime" | "EndTime", Some(t)) => EpochSeconds(t).to_rfc3339(),
            _ => scalar(v),
        };
        writeln!(out, "{k}: {shown}")?;
    }
    Ok(())
}

fn print_table(response: &Response, out: &mut dyn Write) -> std::io::Result<()> {
    match response {
        Response::ListDatastores(list) => {
            let rows: Vec<Vec<String>> = list
                .datastore_properties_list
                .iter()
                .map(|p| {
                    vec![
                        p.datastore_id.clone(),
                        p.datastore_name.clone(),
                        p.datastore_status.to_string(),
                        p.created_at.to_rfc3339(),
                    ]
                })
                .collect();
            let columns = [
                "DatastoreId",
                "DatastoreName",
                "DatastoreStatus",
                "CreatedAt",
            ];
            print_columns(&columns, &rows, out)
        }
        Response::ListTags(list) => {
            for tag in &list.tags {
                writeln!(out, "{}={}", tag.key, tag.value)?;
            }
            Ok(())
        }
        Response::DescribeDatastore(d) => print_members(&d.datastore_properties, out),
        other => print_members(other, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_need_a_key_and_value() {
        let tags = parse_tags(&["a=b".into(), "c=".into()]).unwrap();
        assert_eq!(tags["a"], "b");
        assert_eq!(tags["c"], "");
        assert!(parse_tags(&["novalue".into()]).is_err());
        assert!(parse_tags(&["aws:x=1".into()]).is_err());
    }

    #[test]
    fn lists_print_as_aligned_columns() {
        use super::super::records::SseConfiguration;
        use super::super::responses::{DatastoreProperties, ListDatastoresResponse};
        let response = Response::ListDatastores(ListDatastoresResponse {
            datastore_properties_list: vec![DatastoreProperties {
                datastore_id: "abc".into(),
                datastore_arn: "arn".into(),
                datastore_name: "cohort".into(),
                datastore_status: DatastoreState::Active,
                created_at: EpochSeconds(1.7e9),
                datastore_type_version: "R4",
                datastore_endpoint: "http://h/".into(),
                sse_configuration: SseConfiguration::default(),
                preload_data_config: None,
                identity_provider_configuration: None,
                error_cause: None,
            }],
            next_token: None,
        });
        let mut out = Vec::new();
        print_table(&response, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DatastoreId  DatastoreName  DatastoreStatus"));
        assert!(lines[1].contains("cohort") && lines[1].contains("2023-11-14T22:13:20Z"));
    }
}
