//! The Flight SQL service: statements, prepared statements, catalog metadata and
//! cancellation over [`SqlEngine`]s sharing one set of data stores.
//!
//! A statement is planned when the client asks for its `FlightInfo` (so syntax errors,
//! unknown tables and writes are refused there, with the schema known up front) and planned
//! again and executed when the client fetches the ticket. Tickets carry the statement, its
//! data store and a query id (see `QueryTicket`); results stream batch by batch as the
//! client reads, so a result never has to fit in server memory.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::access::{self, FlightCaller};
use super::auth::Authenticator;
use super::metadata::{self, TABLE_TYPE};
use super::state::{Interrupted, InterruptedError, QueryTicket, ServerState, guard};
use crate::registry::Registry;
use fhirlake_sql::{CATALOG_NAME, QueryLimits, SqlEngine, SqlError};

/// Header naming the data store a call's unqualified table names refer to (ADBC:
/// `adbc.flight.sql.rpc.call_header.x-fhirlake-datastore`).
pub const DATASTORE_HEADER: &str = "x-fhirlake-datastore";

/// Cookie carrying the session that `USE` changes (ADBC keeps it with
/// `adbc.flight.sql.rpc.with_cookie_middleware=true`).
pub const SESSION_COOKIE: &str = "fhirlake_session";

/// `ActionCancelQueryResult.CancelResult.CANCEL_RESULT_CANCELLED` in the Flight SQL spec
/// (arrow-flight does not export the enum).
const CANCEL_RESULT_CANCELLED: i32 = 1;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Settings of the service that are not about the network.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Per-query limits (memory).
    pub limits: QueryLimits,
    /// Longest a query may run, from the start of its fetch to its last batch.
    pub timeout: Option<Duration>,
    /// The REST API's origin, whose data store endpoints SMART tokens name as audience
    /// (`None`: SMART tokens are not accepted).
    pub http_origin: Option<crate::origin::HttpOrigin>,
}

/// The Flight SQL service.
pub struct FhirlakeFlightSql {
    /// The live data stores (shared with the other front ends).
    registry: Registry,
    /// The data store unqualified names mean when a call does not choose one.
    default_datastore: String,
    auth: Authenticator,
    state: Arc<ServerState>,
    config: ServiceConfig,
    sql_info: SqlInfoData,
}

impl FhirlakeFlightSql {
    pub fn new(
        registry: Registry,
        default_datastore: String,
        auth: Authenticator,
        config: ServiceConfig,
    ) -> Self {
        let sql_info = metadata::sql_info(config.timeout.map(|t| t.as_secs()));
        Self {
            registry,
            default_datastore,
            auth,
            state: Arc::default(),
            config,
            sql_info,
        }
    }

    /// The engine whose current data store is `datastore` (an id, creation name or SQL name).
    fn engine(&self, datastore: &str) -> Result<(String, Arc<SqlEngine>), Status> {
        self.registry.sql_engine(datastore).map_err(|e| {
            Status::not_found(format!(
                "{e}; the data stores are: {}",
                self.registry.sql().datastores().join(", ")
            ))
        })
    }

    /// Authenticates the call: the endpoint's credentials, nothing on an open endpoint, or a
    /// SMART access token of the call's data store ([`super::access`]).
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<FlightCaller, Status> {
        let bearer = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with("Bearer "));
        match (self.auth.check(metadata), bearer) {
            (Ok(()), _) if self.auth.is_enabled() => return Ok(FlightCaller::Operator),
            (Ok(()), None) => return Ok(FlightCaller::Open),
            (Err(e), None) => return Err(e),
            _ => {}
        }
        let datastore = self.datastore_of(metadata)?;
        let smart = self
            .registry
            .resolve(&datastore)
            .filter(|l| l.auth.smart_metadata().is_some());
        match (smart, bearer) {
            (Some(live), Some(token)) => {
                access::smart_caller(&live, self.config.http_origin.as_ref(), token).await
            }
            _ if self.auth.is_enabled() => Err(Status::unauthenticated(
                "invalid credentials: the token, user name or password was not accepted",
            )),
            _ => Ok(FlightCaller::Open),
        }
    }

    /// Authenticates the call and picks its data store.
    async fn call_datastore(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(String, FlightCaller), Status> {
        let caller = self.authenticate(metadata).await?;
        Ok((self.datastore_of(metadata)?, caller))
    }

    /// The call's data store: the header, else the session's `USE`, else the default.
    fn datastore_of(&self, metadata: &MetadataMap) -> Result<String, Status> {
        if let Some(v) = metadata.get(DATASTORE_HEADER) {
            let name = v.to_str().map_err(|_| {
                Status::invalid_argument(format!("the {DATASTORE_HEADER} header is not ASCII"))
            })?;
            return Ok(name.trim().to_string());
        }
        if let Some(session) = session_id(metadata)
            && let Some(ds) = self.state.session_datastore(&session)
        {
            return Ok(ds);
        }
        Ok(self.default_datastore.clone())
    }

    /// A FlightInfo for a query ticket: planned now, so errors and the schema come back
    /// before any data.
    async fn statement_info(
        &self,
        sql: &str,
        (datastore, caller): (&str, &FlightCaller),
        prepared: Option<String>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let (datastore, engine) = self.engine(datastore)?;
        let plan = engine.plan(sql).await.map_err(sql_status)?;
        access::check_plan(&self.registry, &plan, &datastore, caller)?;
        let schema = plan.schema().as_arrow().clone();
        let ticket = self
            .state
            .issue_ticket(sql.to_string(), datastore, prepared);
        let handle = serde_json::to_vec(&ticket).map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| {
                info.with_endpoint(endpoint)
                    .with_descriptor(descriptor)
                    .with_total_records(-1)
                    .with_ordered(true)
            })
    }

    /// Runs a ticket's query and streams its batches as Flight data.
    async fn run_ticket(
        &self,
        ticket: QueryTicket,
        caller: &FlightCaller,
    ) -> Result<DoGetStream, Status> {
        let params = match &ticket.prepared {
            None => Vec::new(),
            Some(handle) => {
                self.state
                    .prepared(handle)
                    .ok_or_else(|| unknown_prepared(handle))?
                    .params
            }
        };
        let (_, engine) = self.engine(&ticket.datastore)?;
        let cancel = self.state.watch_query(&ticket.id);
        if *cancel.borrow() {
            self.state.finish_query(&ticket.id);
            return Err(Status::cancelled("query cancelled by the client"));
        }
        let plan = engine.plan(&ticket.sql).await.map_err(sql_status)?;
        access::check_plan(&self.registry, &plan, &ticket.datastore, caller)?;
        let stream = engine
            .execute_plan(plan, params, &self.config.limits)
            .await
            .map_err(sql_status)?;
        let schema = stream.schema();
        let stream = guard(stream, cancel, self.config.timeout);
        let finished = FinishOnDrop {
            id: ticket.id,
            state: Arc::clone(&self.state),
        };
        let batches = stream.map_err(|e| FlightError::from(execution_status(e)));
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from)
            // The stream owns `finished`: it ends, or the client goes away, and it drops.
            .map(move |item| {
                let _ = &finished;
                item
            });
        Ok(Box::pin(flight))
    }

    /// DoGet of a statement ticket (audited by `do_get_statement`).
    async fn get_statement(
        &self,
        ticket: TicketStatementQuery,
        caller: &FlightCaller,
    ) -> Result<Response<DoGetStream>, Status> {
        let ticket: QueryTicket = serde_json::from_slice(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("the ticket was not issued by this server"))?;
        Ok(Response::new(self.run_ticket(ticket, caller).await?))
    }

    /// Authenticates a metadata request and answers with a ticket that carries the command.
    async fn metadata_info<C: ProstMessageExt>(
        &self,
        command: C,
        schema: &Schema,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(request.metadata()).await?;
        let descriptor = request.into_inner();
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// Handles `USE name`: remembers the data store for the caller's session (creating one,
    /// announced with a cookie, when the call has none).
    async fn use_datastore(
        &self,
        name: &str,
        metadata: &MetadataMap,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(metadata).await?;
        let (name, _) = self.engine(name)?;
        let (session, new) = match session_id(metadata) {
            Some(s) => (s, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        self.state.set_session_datastore(&session, name);
        let info = FlightInfo::new()
            .try_with_schema(&Schema::empty())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(descriptor)
            .with_total_records(0);
        let mut response = Response::new(info);
        if new {
            let cookie = format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly")
                .parse()
                .map_err(|_| Status::internal("session cookie"))?;
            response.metadata_mut().insert("set-cookie", cookie);
        }
        Ok(response)
    }

    /// Runs a statement sent as an update (ExecuteUpdate). The lake is read-only, so only
    /// `USE` in an existing session succeeds; writes get the read-only error, and queries
    /// are told to use the query call, which returns their rows.
    async fn update(
        &self,
        sql: &str,
        datastore: &str,
        metadata: &MetadataMap,
    ) -> Result<i64, Status> {
        if let Some(name) = use_statement(sql) {
            let (name, _) = self.engine(&name)?;
            let session = session_id(metadata).ok_or_else(|| {
                Status::failed_precondition(
                    "USE needs a session: send it as a query (ExecuteQuery), whose reply \
                     sets the session cookie, or choose the data store per call with the \
                     x-fhirlake-datastore header",
                )
            })?;
            self.state.set_session_datastore(&session, name);
            return Ok(0);
        }
        let (_, engine) = self.engine(datastore)?;
        engine.plan(sql).await.map_err(sql_status)?;
        Err(Status::invalid_argument(
            "this statement is a query: run it with ExecuteQuery to get its rows (fhirlake \
             SQL is read-only; write through the FHIR API or an import)",
        ))
    }

    fn cancel_tickets(&self, info: &FlightInfo) -> bool {
        let mut any = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            if let Ok(ticket) = decode_ticket(&ticket.ticket) {
                any |= self.state.cancel_query(&ticket.id);
            }
        }
        any
    }
}

/// Forgets a query's ticket when its result stream is dropped.
struct FinishOnDrop {
    id: String,
    state: Arc<ServerState>,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.state.finish_query(&self.id);
    }
}

/// The `USE <name>` statement, if `sql` is one.
fn use_statement(sql: &str) -> Option<String> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let mut words = sql.split_whitespace();
    let first = words.next()?;
    if !first.eq_ignore_ascii_case("use") {
        return None;
    }
    let name = words.next()?;
    if words.next().is_some() {
        return None;
    }
    Some(name.trim_matches('"').to_string())
}

fn session_id(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

fn decode_ticket(bytes: &[u8]) -> Result<QueryTicket, Status> {
    let any = Any::decode(bytes).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let ticket: TicketStatementQuery = any
        .unpack()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .ok_or_else(|| Status::invalid_argument("not a statement ticket"))?;
    serde_json::from_slice(&ticket.statement_handle)
        .map_err(|_| Status::invalid_argument("the ticket was not issued by this server"))
}

fn unknown_prepared(handle: &str) -> Status {
    Status::not_found(format!(
        "prepared statement {handle} is unknown (closed, or the server restarted); prepare it again"
    ))
}

/// Maps SQL errors to gRPC statuses: problems with the statement are the client's
/// (INVALID_ARGUMENT, NOT_FOUND), resource limits RESOURCE_EXHAUSTED, the rest INTERNAL.
fn sql_status(e: SqlError) -> Status {
    match e {
        SqlError::Execution(e) => execution_status(e),
        SqlError::UnknownDatastore(_) | SqlError::NoDatastore => Status::not_found(e.to_string()),
        SqlError::Schema(_) => Status::internal(e.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn execution_status(e: DataFusionError) -> Status {
    if let DataFusionError::External(inner) = e.find_root()
        && let Some(i) = inner.downcast_ref::<InterruptedError>()
    {
        return match i.why {
            Interrupted::Cancelled => Status::cancelled(i.to_string()),
            Interrupted::TimedOut(_) => Status::deadline_exceeded(i.to_string()),
        };
    }
    let message = e.strip_backtrace();
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "query exceeded the server's per-query memory limit: {message}"
        )),
        DataFusionError::ArrowError(..)
        | DataFusionError::Execution(_)
        | DataFusionError::Plan(_) => Status::invalid_argument(format!("query failed: {message}")),
        _ => Status::internal(format!("query failed: {message}")),
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn batch_stream(batch: RecordBatch) -> DoGetStream {
    let schema = batch.schema();
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(Status::from);
    Box::pin(stream)
}

fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// One row of bound parameters as scalars, in column order.
fn parameter_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>, Status> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    match rows {
        0 => Ok(Vec::new()),
        1 => {
            let batch = batches
                .iter()
                .find(|b| b.num_rows() == 1)
                .expect("one batch has the row");
            batch
                .columns()
                .iter()
                .map(|c: &ArrayRef| {
                    ScalarValue::try_from_array(c, 0)
                        .map_err(|e| Status::invalid_argument(e.to_string()))
                })
                .collect()
        }
        n => Err(Status::invalid_argument(format!(
            "{n} rows of parameters were bound, but a query runs with one row of parameters"
        ))),
    }
}

#[tonic::async_trait]
impl FlightSqlService for FhirlakeFlightSql {
    type FlightService = FhirlakeFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let token = self.auth.handshake(request.metadata())?;
        let payload = token.clone().unwrap_or_default();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: payload.into_bytes().into(),
        };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::once(async { Ok(reply) }));
        let mut response = Response::new(stream);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if let Some(name) = use_statement(&query.query) {
            let (metadata, _, descriptor) = request.into_parts();
            return self.use_datastore(&name, &metadata, descriptor).await;
        }
        let (datastore, caller) = self.call_datastore(request.metadata()).await?;
        let info = self
            .statement_info(
                &query.query,
                (&datastore, &caller),
                None,
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.authenticate(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let prepared = self
            .state
            .prepared(&handle)
            .ok_or_else(|| unknown_prepared(&handle))?;
        if let Some(name) = use_statement(&prepared.sql) {
            let (metadata, _, descriptor) = request.into_parts();
            return self.use_datastore(&name, &metadata, descriptor).await;
        }
        let info = self
            .statement_info(
                &prepared.sql,
                (&prepared.datastore, &caller),
                Some(handle),
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (registry, metadata) = (&self.registry, request.metadata());
        let peer = request.remote_addr();
        let mut entry = super::audit::entry(registry, &self.auth, &ticket, metadata, peer);
        let caller = self.authenticate(metadata).await;
        if let Some(name) = caller.as_ref().ok().and_then(FlightCaller::name) {
            entry.principal = name;
        }
        let result = match caller {
            Ok(caller) => self.get_statement(ticket, &caller).await,
            Err(e) => Err(e),
        };
        super::audit::finish(registry, entry, result.as_ref().err()).await;
        result
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (datastore, _) = self.call_datastore(request.metadata()).await?;
        if let Some(name) = use_statement(&query.query) {
            // ADBC prepares every statement; `USE` takes effect when it is executed.
            let (name, _) = self.engine(&name)?;
            let handle = self.state.prepare(query.query, name);
            return Ok(ActionCreatePreparedStatementResult {
                prepared_statement_handle: handle.into_bytes().into(),
                dataset_schema: schema_bytes(&Schema::empty())?,
                parameter_schema: schema_bytes(&Schema::empty())?,
            });
        }
        let (datastore, engine) = self.engine(&datastore)?;
        let plan = engine.plan(&query.query).await.map_err(sql_status)?;
        let dataset_schema = plan.schema().as_arrow().clone();
        let mut params: Vec<(usize, String, arrow::datatypes::DataType)> = plan
            .get_parameter_types()
            .map_err(|e| Status::invalid_argument(e.strip_backtrace()))?
            .into_iter()
            .map(|(id, ty)| {
                let position = id.trim_start_matches('$').parse().unwrap_or(usize::MAX);
                (position, id, ty.unwrap_or(arrow::datatypes::DataType::Utf8))
            })
            .collect();
        params.sort();
        let parameter_schema = Schema::new(
            params
                .into_iter()
                .map(|(_, id, ty)| arrow::datatypes::Field::new(id, ty, true))
                .collect::<Vec<_>>(),
        );
        let handle = self.state.prepare(query.query, datastore);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.authenticate(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                request.into_inner().map_err(FlightError::from),
            )
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("cannot read the parameters: {e}")))?;
        let params = parameter_row(&batches)?;
        if !self.state.bind(&handle, params) {
            return Err(unknown_prepared(&handle));
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into_bytes().into()),
        })
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (datastore, _) = self.call_datastore(request.metadata()).await?;
        self.update(&command.query, &datastore, request.metadata())
            .await
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.authenticate(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&command.prepared_statement_handle).to_string();
        let prepared = self
            .state
            .prepared(&handle)
            .ok_or_else(|| unknown_prepared(&handle))?;
        self.update(&prepared.sql, &prepared.datastore, request.metadata())
            .await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.authenticate(request.metadata()).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        // Closing twice is harmless.
        self.state.close_prepared(&handle);
        Ok(())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        self.authenticate(request.metadata()).await?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("not a FlightInfo: {e}")))?;
        if !self.cancel_tickets(&info) {
            return Err(Status::not_found(
                "no such query: it finished or was never issued",
            ));
        }
        Ok(ActionCancelQueryResult {
            result: CANCEL_RESULT_CANCELLED,
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let action = request.into_inner();
        if action.r#type != "CancelFlightInfo" {
            return Err(Status::unimplemented(format!(
                "action {:?} is not supported",
                action.r#type
            )));
        }
        let req = arrow_flight::CancelFlightInfoRequest::decode(action.body)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without a FlightInfo"))?;
        let status = if self.cancel_tickets(&info) {
            arrow_flight::CancelStatus::Cancelled
        } else {
            arrow_flight::CancelStatus::NotCancellable
        };
        let result = arrow_flight::CancelFlightInfoResult {
            status: status as i32,
        };
        let body = result.encode_to_vec();
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(arrow_flight::Result { body: body.into() })
        }))))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, &schema, request).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        Ok(Response::new(batch_stream(
            builder.build().map_err(arrow_status)?,
        )))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let mut builder = query.into_builder();
        for datastore in self.registry.sql().datastores() {
            builder.append(CATALOG_NAME, datastore);
        }
        Ok(Response::new(batch_stream(
            builder.build().map_err(arrow_status)?,
        )))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let mut builder = query.into_builder();
        for datastore in self.registry.sql().datastores() {
            for table in self
                .registry
                .sql()
                .tables(Some(&datastore))
                .map_err(sql_status)?
            {
                builder
                    .append(
                        CATALOG_NAME,
                        &datastore,
                        &table.name,
                        TABLE_TYPE,
                        &table.schema,
                    )
                    .map_err(arrow_status)?;
            }
        }
        Ok(Response::new(batch_stream(
            builder.build().map_err(arrow_status)?,
        )))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, &schema, request).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        Ok(Response::new(batch_stream(
            builder.build().map_err(arrow_status)?,
        )))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(query, &schema, request).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(arrow_status)?;
        Ok(Response::new(batch_stream(batch)))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::primary_keys_schema(), request)
            .await
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        Ok(Response::new(batch_stream(metadata::no_primary_keys())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::foreign_keys_schema(), request)
            .await
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        Ok(Response::new(batch_stream(metadata::no_foreign_keys())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::foreign_keys_schema(), request)
            .await
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(request.metadata()).await?;
        Ok(Response::new(batch_stream(metadata::no_foreign_keys())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_use_statements() {
        assert_eq!(use_statement("USE research;").as_deref(), Some("research"));
        assert_eq!(use_statement("  use \"Fhir\" ").as_deref(), Some("Fhir"));
        assert_eq!(use_statement("SELECT 1"), None);
        assert_eq!(use_statement("use a b"), None);
        assert_eq!(use_statement("useful"), None);
    }

    #[test]
    fn reads_the_session_cookie() {
        let mut m = MetadataMap::new();
        m.insert("cookie", "a=b; fhirlake_session=abc".parse().unwrap());
        assert_eq!(session_id(&m).as_deref(), Some("abc"));
        assert_eq!(session_id(&MetadataMap::new()), None);
    }

    #[test]
    fn one_parameter_row_binds() {
        use arrow::array::{Int64Array, StringArray};
        let batch = RecordBatch::try_from_iter(vec![
            ("$1", Arc::new(StringArray::from(vec!["male"])) as ArrayRef),
            ("$2", Arc::new(Int64Array::from(vec![1970])) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(
            parameter_row(std::slice::from_ref(&batch)).unwrap(),
            vec![ScalarValue::from("male"), ScalarValue::from(1970i64)]
        );
        let two = arrow::compute::concat_batches(&batch.schema(), [&batch, &batch]).unwrap();
        let err = parameter_row(&[two]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
