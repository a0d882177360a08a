//! The Flight SQL endpoint, served in-process on loopback and driven with arrow-flight's own
//! Flight SQL client and with the remote REPL backend: statements, prepared statements with
//! parameters, catalog metadata, data store selection, authentication, streaming of large
//! results, cancellation, and the per-query memory and time limits.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::{Action, CancelFlightInfoRequest, FlightInfo};
use fhirlake::cli::QueryBackend;
use fhirlake::cli::remote::{RemoteBackend, RemoteOptions};
use fhirlake::flight::{AuthConfig, DATASTORE_HEADER, FlightSqlConfig, FlightSqlServer};
use fhirlake::installation::Installation;
use fhirlake::registry::Registry;
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::Channel;

/// The shipped sample's patients, imported into `datastore`.
async fn import_patients(inst: &Installation, datastore: Option<&str>) {
    let ds = inst.datastore_or_create(datastore).await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea-r4-100p/Patient.ndjson.gz");
    crate::common::import_and_sync(inst, &ds, &path).await;
}

/// A running endpoint; stops when dropped.
struct Running {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start(config: FlightSqlConfig, extra_datastore: bool) -> Running {
    let config_has_tls = config.tls.is_some();
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    import_patients(&inst, None).await;
    if extra_datastore {
        import_patients(&inst, Some("research")).await;
    }
    let server = FlightSqlServer::bind(
        registry(&inst).await,
        FlightSqlConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..config
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let scheme = if config_has_tls { "grpc+tls" } else { "grpc" };
    assert_eq!(server.endpoint(), format!("{scheme}://{addr}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        _stop: stop,
        _dir: dir,
    }
}

async fn client(addr: std::net::SocketAddr) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let batches: Vec<RecordBatch> = client.do_get(ticket).await?.try_collect().await?;
        out.extend(batches);
    }
    Ok(out)
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, FlightError> {
    let info = client.execute(sql.to_string(), None).await?;
    fetch(client, info).await
}

fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn single_i64(batches: &[RecordBatch]) -> i64 {
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    b.column(0).as_primitive::<Int64Type>().value(0)
}

fn patient_count_in_sample() -> i64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea-r4-100p/Patient.ndjson.gz");
    crate::common::gz_lines(&path).len() as i64
}

/// The live data stores of `inst`, as `fhirlake serve` shares them between its front ends.
async fn registry(inst: &Installation) -> Registry {
    Registry::open(inst.clone(), Duration::from_millis(500))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_statements_and_metadata() {
    let server = start(FlightSqlConfig::default(), true).await;
    let mut c = client(server.addr).await;
    let expected = patient_count_in_sample();

    // A statement in the Athena dialect, against the default data store.
    let batches = query(&mut c, "SELECT count(*) AS n FROM database.patient")
        .await
        .unwrap();
    assert_eq!(single_i64(&batches), expected);
    let batches = query(
        &mut c,
        "SELECT gender, count(*) AS n FROM patient GROUP BY gender ORDER BY gender",
    )
    .await
    .unwrap();
    let total: i64 = batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
        .sum();
    assert_eq!(total, expected);

    // Prepared statement with positional parameters, bound twice.
    let mut prepared = c
        .prepare(
            "SELECT count(*) AS n FROM patient WHERE gender = ? AND year(date(birthdate)) >= ?"
                .to_string(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 2);
    let mut by_gender = 0;
    for gender in ["female", "male"] {
        let params = RecordBatch::try_from_iter(vec![
            (
                "$1",
                Arc::new(StringArray::from(vec![gender])) as Arc<dyn Array>,
            ),
            (
                "$2",
                Arc::new(arrow::array::Int64Array::from(vec![0])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        prepared.set_parameters(params).unwrap();
        let info = prepared.execute().await.unwrap();
        let n = single_i64(&fetch(&mut c, info).await.unwrap());
        let literal = single_i64(
            &query(
                &mut c,
                &format!("SELECT count(*) FROM patient WHERE gender = '{gender}'"),
            )
            .await
            .unwrap(),
        );
        assert_eq!(n, literal, "{gender}");
        by_gender += n;
    }
    assert_eq!(by_gender, expected);
    prepared.close().await.unwrap();

    // Metadata: catalogs, data stores, tables with schemas, table types, SqlInfo, keys.
    let info = c.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut c, info).await.unwrap();
    assert_eq!(
        catalogs[0].column(0).as_string::<i32>().value(0),
        "fhirlake"
    );
    let info = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let schemas: Vec<String> = fetch(&mut c, info)
        .await
        .unwrap()
        .iter()
        .flat_map(|b| {
            let col = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| col.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(schemas, vec!["fhir", "research"]);
    let info = c
        .get_tables(CommandGetTables {
            catalog: Some("fhirlake".into()),
            db_schema_filter_pattern: Some("fhir".into()),
            table_name_filter_pattern: Some("pat%".into()),
            table_types: vec!["TABLE".into()],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut c, info).await.unwrap();
    let names = tables[0].column(2).as_string::<i32>();
    assert_eq!(names.len(), 1);
    assert_eq!(names.value(0), "patient");
    let ipc = tables[0].column(4).as_binary::<i32>().value(0);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(ipc).unwrap();
    assert!(schema.field_with_name("birthdate").is_ok());
    let info = c.get_table_types().await.unwrap();
    let types = fetch(&mut c, info).await.unwrap();
    assert_eq!(types[0].column(0).as_string::<i32>().value(0), "TABLE");
    let info = c
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .unwrap();
    assert_eq!(fetch(&mut c, info).await.unwrap()[0].num_rows(), 2);
    let info = c
        .get_primary_keys(arrow_flight::sql::CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("fhir".into()),
            table: "patient".into(),
        })
        .await
        .unwrap();
    let keys = fetch(&mut c, info).await.unwrap();
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

    // Statement errors map to INVALID_ARGUMENT with the SQL layer's message; the server
    // keeps serving.
    let err = status(query(&mut c, "DROP TABLE patient").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("read-only"), "{err}");
    let err = status(query(&mut c, "SELECT nope FROM patient").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("nope"), "{err}");
    // ExecuteUpdate: writes are refused as read-only, queries pointed to ExecuteQuery.
    let err = status(
        c.execute_update("DELETE FROM patient".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("read-only"), "{err}");
    let err = status(c.execute_update("SELECT 1".into(), None).await.unwrap_err());
    assert!(err.message().contains("ExecuteQuery"), "{err}");

    // The schema announced in the FlightInfo is the schema of the batches that follow, also
    // where DataFusion reads strings from Parquet as views.
    let info = c
        .execute(
            "SELECT id, gender, name[1].family AS family, lower(gender) AS g FROM patient".into(),
            None,
        )
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert!(!batches.is_empty());
    for b in &batches {
        assert_eq!(b.schema().fields(), announced.fields());
    }
    assert_eq!(
        single_i64(&query(&mut c, "SELECT count(*) FROM patient").await.unwrap()),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_store_per_call_and_per_session() {
    let server = start(FlightSqlConfig::default(), true).await;
    let expected = patient_count_in_sample();

    // The header picks the data store for unqualified names.
    let mut c = client(server.addr).await;
    c.set_header(DATASTORE_HEADER, "research");
    let n = single_i64(&query(&mut c, "SELECT count(*) FROM patient").await.unwrap());
    assert_eq!(n, expected);
    let mut c = client(server.addr).await;
    c.set_header(DATASTORE_HEADER, "nope");
    let err = status(query(&mut c, "SELECT 1").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nope"), "{err}");

    // `USE` answers with a session cookie; sending it back keeps the choice.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel.clone());
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(
        arrow_flight::sql::ProstMessageExt::as_any(&arrow_flight::sql::CommandStatementQuery {
            query: "USE research".into(),
            transaction_id: None,
        })
        .encode_to_vec(),
    );
    let response = raw.get_flight_info(descriptor).await.unwrap();
    let cookie = response
        .metadata()
        .get("set-cookie")
        .expect("USE sets a session cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut c = FlightSqlServiceClient::new(channel);
    c.set_header("cookie", cookie);
    let batches = query(&mut c, "SELECT count(*) FROM patient").await.unwrap();
    assert_eq!(single_i64(&batches), expected);

    // The remote REPL backend: statements, \d listing and describe over the same endpoint.
    let remote = RemoteBackend::connect(RemoteOptions {
        url: format!("grpc://{}", server.addr),
        datastore: Some("research".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let batches: Vec<RecordBatch> = remote
        .execute("SELECT count(*) AS n FROM patient")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(single_i64(&batches), expected);
    let tables = remote.tables().await.unwrap();
    let patient = tables.iter().find(|t| t.name == "patient").unwrap();
    assert_eq!(patient.rows as i64, expected);
    assert!(
        tables
            .iter()
            .any(|t| t.name == "observation" && t.rows == 0)
    );
    assert!(remote.describe("Patient").await.unwrap().is_some());
    assert!(remote.describe("nosuch").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_when_configured() {
    let server = start(
        FlightSqlConfig {
            auth: AuthConfig {
                token: Some("s3cret".into()),
                basic: Some(("analyst".into(), "pw".into())),
            },
            ..Default::default()
        },
        false,
    )
    .await;
    let mut c = client(server.addr).await;
    let err = status(query(&mut c, "SELECT 1").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("requires authentication"), "{err}");

    c.set_token("wrong".into());
    let err = status(query(&mut c, "SELECT 1").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("invalid credentials"), "{err}");

    c.set_token("s3cret".into());
    assert_eq!(single_i64(&query(&mut c, "SELECT 1").await.unwrap()), 1);

    let mut c = client(server.addr).await;
    assert!(c.handshake("analyst", "wrong").await.is_err());
    c.handshake("analyst", "pw").await.unwrap();
    assert!(c.token().is_some());
    assert_eq!(single_i64(&query(&mut c, "SELECT 2").await.unwrap()), 2);

    // Serving off loopback without credentials is refused before binding.
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let err = FlightSqlServer::bind(
        registry(&inst).await,
        FlightSqlConfig {
            addr: "0.0.0.0:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("an open endpoint off loopback is refused");
    assert!(err.to_string().contains("without authentication"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_and_limits_hold() {
    let server = start(
        FlightSqlConfig {
            memory_limit: Some(4 << 20),
            timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        },
        false,
    )
    .await;
    let mut c = client(server.addr).await;

    // Ten million rows arrive as a stream of many batches.
    let info = c
        .execute("SELECT value FROM range(10000000)".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = c.do_get(ticket).await.unwrap();
    let (mut rows, mut batches) = (0usize, 0usize);
    while let Some(batch) = stream.try_next().await.unwrap() {
        rows += batch.num_rows();
        batches += 1;
    }
    assert_eq!(rows, 10_000_000);
    assert!(batches > 100, "{batches} batches");

    // A sort needing more than the 4 MiB pool fails with RESOURCE_EXHAUSTED ...
    let err = status(
        query(
            &mut c,
            "SELECT value FROM range(3000000) ORDER BY value DESC LIMIT 10000000",
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("memory limit"), "{err}");
    // ... and a query running past 3 s with DEADLINE_EXCEEDED; the server stays up.
    let started = Instant::now();
    let err = status(
        query(
            &mut c,
            "SELECT count(*) FROM range(100000) a CROSS JOIN range(100000) b",
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("time limit"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(single_i64(&query(&mut c, "SELECT 7").await.unwrap()), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_can_be_cancelled() {
    let server = start(FlightSqlConfig::default(), false).await;
    let mut c = client(server.addr).await;
    let info = c
        .execute(
            "SELECT count(*) FROM range(100000) a CROSS JOIN range(100000) b".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut fetcher = client(server.addr).await;
    let fetch = tokio::spawn(async move {
        let started = Instant::now();
        let result: Result<Vec<RecordBatch>, FlightError> =
            async { fetcher.do_get(ticket).await?.try_collect().await }.await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = CancelFlightInfoRequest {
        info: Some(info.clone()),
    }
    .encode_to_vec();
    let results: Vec<arrow_flight::Result> = c
        .do_action(Action::new("CancelFlightInfo", body))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let result = arrow_flight::CancelFlightInfoResult::decode(results[0].body.clone()).unwrap();
    assert_eq!(result.status, arrow_flight::CancelStatus::Cancelled as i32);
    let (result, elapsed) = fetch.await.unwrap();
    let err = status(result.unwrap_err());
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(single_i64(&query(&mut c, "SELECT 3").await.unwrap()), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let server = start(
        FlightSqlConfig {
            tls: Some((cert_pem.clone(), key_pem)),
            ..Default::default()
        },
        false,
    )
    .await;
    let port = server.addr.port();
    let remote = RemoteBackend::connect(RemoteOptions {
        url: format!("grpc+tls://localhost:{port}"),
        tls_ca: Some(cert_pem),
        ..Default::default()
    })
    .await
    .unwrap();
    let batches: Vec<RecordBatch> = remote
        .execute("SELECT count(*) FROM patient")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(single_i64(&batches), patient_count_in_sample());
    // A plaintext client gets an error, not a hang.
    let plain = tokio::time::timeout(
        Duration::from_secs(20),
        RemoteBackend::connect(RemoteOptions {
            url: format!("grpc://localhost:{port}"),
            ..Default::default()
        }),
    )
    .await
    .expect("a plaintext client is answered");
    assert!(plain.is_err());
}
