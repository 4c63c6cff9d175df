//! The PostgreSQL wire protocol, by `datafusion-postgres` over the same
//! session the HTTP endpoint uses.
//!
//! psql, psycopg, JDBC and Grafana connect as to PostgreSQL: simple and
//! extended queries, prepared statements with parameters, and the
//! `pg_catalog` / `information_schema` queries they list tables with. What
//! paicha adds: it is read-only (statements that would change data,
//! schema, files or the shared session settings are refused before they are
//! planned), and with users configured it asks for a password by
//! SCRAM-SHA-256, as PostgreSQL does by default.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Reset, Set, Statement};
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::bounds;
use crate::catalog::Results;

/// SCRAM iteration count, PostgreSQL's default.
const ITERATIONS: usize = 4096;

/// The PostgreSQL users allowed in, by name. Empty: no password is asked
/// (only allowed on a loopback address; see the CLI).
#[derive(Clone, Default)]
pub struct PgUsers {
    verifiers: HashMap<String, Verifier>,
    /// The secret an unknown user's salt is derived from, per process.
    secret: [u8; 32],
}

#[derive(Clone)]
struct Verifier {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl std::fmt::Debug for PgUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords, nor their hashes.
        f.debug_struct("PgUsers")
            .field("users", &self.verifiers.len())
            .finish()
    }
}

impl PgUsers {
    /// Users from `NAME:PASSWORD` pairs. Passwords are kept only as SCRAM
    /// salted hashes.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut verifiers = HashMap::new();
        for pair in pairs {
            let Some((name, password)) = pair.split_once(':') else {
                return Err("a PostgreSQL user must be given as NAME:PASSWORD".into());
            };
            if name.is_empty() || password.is_empty() {
                return Err("a PostgreSQL user needs a name and a password (NAME:PASSWORD)".into());
            }
            let salt = rand::random::<[u8; 16]>().to_vec();
            let salted = gen_salted_password(password, &salt, ITERATIONS);
            verifiers.insert(name.to_string(), Verifier { salt, salted });
        }
        Ok(PgUsers {
            verifiers,
            secret: rand::random(),
        })
    }

    /// The salt offered to a name no user has: derived from the server's
    /// secret, so it is as stable as a real user's and random-looking
    /// (a fresh one each time would tell a client the name is unknown).
    fn decoy_salt(&self, name: &str) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.secret);
        h.update(name.as_bytes());
        h.finalize()[..16].to_vec()
    }

    /// The SCRAM salt and salted password of `name`. An unknown user goes
    /// through the same exchange and fails it, as in PostgreSQL, with a
    /// salt as stable as a real one's, so a client cannot tell which names
    /// exist.
    fn password(&self, name: &str) -> Password {
        match self.verifiers.get(name) {
            Some(v) => Password::new(Some(v.salt.clone()), v.salted.clone()),
            None => Password::new(
                Some(self.decoy_salt(name)),
                rand::random::<[u8; 32]>().to_vec(),
            ),
        }
    }

    /// Whether a password is asked for.
    pub fn required(&self) -> bool {
        !self.verifiers.is_empty()
    }
}

#[derive(Debug)]
struct Users(PgUsers);

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Ok(self.0.password(login.user().unwrap_or_default()))
    }
}

struct Handlers {
    session: Arc<DfSessionService>,
    users: Option<Arc<Users>>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<Cancels>,
}

/// A CancelRequest stops the statement wherever it is: pgwire's handler
/// while the statement is planned or its first rows computed, the
/// connection's [`bounds::Connection`] while rows stream.
struct Cancels {
    pgwire: DefaultCancelHandler,
    running: Arc<bounds::Connections>,
}

#[async_trait]
impl pgwire::api::cancel::CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: pgwire::messages::cancel::CancelRequest) {
        self.running
            .cancel(&(request.pid, request.secret_key.to_bytes().to_vec()));
        self.pgwire.on_cancel_request(request).await;
    }
}

struct Open {
    connections: Arc<ConnectionManager>,
}

impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

enum Startup {
    Open(Open),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(h) => h.on_startup(client, message).await,
            Startup::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

struct QuietErrors;

impl ErrorHandler for QuietErrors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        tracing::debug!(%error, "PostgreSQL client error");
        // The SQLSTATE PostgreSQL gives each, so drivers raise the right
        // exception (psycopg's QueryCanceled, OutOfMemory).
        let text = error.to_string();
        let (code, message) = if text.contains(bounds::TIMED_OUT) || text.contains(bounds::CANCELED)
        {
            ("57014", text)
        } else if let Some(message) = bounds::over_the_pool(&text) {
            ("53200", message)
        } else {
            return;
        };
        *error = PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_string(),
            code.to_string(),
            message,
        )));
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the SCRAM exchange keeps state.
        Arc::new(match &self.users {
            None => Startup::Open(Open {
                connections: self.connections.clone(),
            }),
            Some(users) => {
                let mut scram = ScramAuth::new(users.clone());
                scram.set_iterations(ITERATIONS);
                Startup::Scram(
                    SASLAuthStartupHandler::new(
                        Arc::new(DefaultServerParameterProvider::default()),
                    )
                    .with_scram(scram)
                    .with_connection_manager(self.connections.clone()),
                )
            }
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(QuietErrors)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves the PostgreSQL wire protocol on `listener` until the process
/// ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<SessionContext>,
    users: PgUsers,
    limits: bounds::Limits,
) -> std::io::Result<()> {
    let running = Arc::new(bounds::Connections::default());
    let mut hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly {
            running: running.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    if let Some(results) = ctx.state().config().get_extension::<Results>() {
        hooks.push(Arc::new(Cached(results)));
    }
    let connections = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(Handlers {
        session: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
        users: users.required().then(|| Arc::new(Users(users))),
        cancel: Arc::new(Cancels {
            pgwire: DefaultCancelHandler::new(connections.clone()),
            running: running.clone(),
        }),
        connections,
    });
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // Clients told they are too many, at once: past these, a connection is
    // just closed, so a flood cannot hold descriptors the pipeline needs.
    let refusing = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a PostgreSQL connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                let cancels = handlers.cancel.clone();
                tokio::spawn(async move {
                    let refuse = refuse_connection(&mut socket, limits.max_connections, &cancels);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), refuse).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let handlers = handlers.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let connection = Arc::new(bounds::Connection::default());
            let (socket, watch) = match watched(socket) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "cannot serve a PostgreSQL connection");
                    return;
                }
            };
            let served = bounds::CONNECTION.scope(
                connection.clone(),
                pgwire::tokio::process_socket(socket, None, handlers),
            );
            let ended = tokio::select! {
                ended = served => ended,
                () = client_gone(watch, &connection) => Ok(()),
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "PostgreSQL connection ended with an error");
            }
            running.forget(&connection);
            drop(permit);
        });
    }
}

/// The socket to serve, and a second handle on it to notice the client
/// leave while a query computes (pgwire reads nothing then).
fn watched(
    socket: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let watch = socket.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(socket)?, watch))
}

/// Returns once the client has closed the connection, after canceling the
/// query it left running: a query nobody waits for stops within a second,
/// not at its timeout.
async fn client_gone(watch: std::net::TcpStream, connection: &bounds::Connection) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // Nonblocking (shared with the served handle): data not read yet
        // is the next request, not the end.
        match watch.peek(&mut [0u8; 1]) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    connection.cancel();
    // The served side sees the end too; it finishes the connection.
    std::future::pending::<()>().await
}

/// Answers a client over the connection limit as PostgreSQL does: past its
/// SSL or GSS request (declined) and its startup message, an ErrorResponse.
/// A CancelRequest is still carried out: it is how a client stops a query
/// that is holding the port full.
async fn refuse_connection(
    socket: &mut tokio::net::TcpStream,
    max: usize,
    cancels: &Cancels,
) -> std::io::Result<()> {
    use pgwire::api::cancel::CancelHandler;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CANCEL_REQUEST: u32 = 80_877_102;
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    loop {
        let len = socket.read_u32().await?;
        if !(8..=10_000).contains(&len) {
            break;
        }
        let mut rest = vec![0u8; len as usize - 4];
        socket.read_exact(&mut rest).await?;
        let code = rest
            .get(..4)
            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == SSL_REQUEST || code == GSS_REQUEST {
            socket.write_all(b"N").await?;
            continue;
        }
        if code == CANCEL_REQUEST && rest.len() >= 12 {
            let pid = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            let key = bytes::Bytes::copy_from_slice(&rest[8..]);
            cancels
                .on_cancel_request(pgwire::messages::cancel::CancelRequest::new(
                    pid,
                    pgwire::messages::startup::SecretKey::Bytes(key),
                ))
                .await;
            // PostgreSQL answers a CancelRequest by closing the connection.
            return Ok(());
        }
        break;
    }
    socket.write_all(&too_many_connections(max)).await
}

/// The ErrorResponse PostgreSQL sends a client over its connection limit
/// (SQLSTATE 53300); libpq and the drivers print its message.
fn too_many_connections(max: usize) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL".to_string()),
        (b'V', "FATAL".to_string()),
        (b'C', "53300".to_string()),
        (
            b'M',
            format!("sorry, too many clients already (the server's --max-connections is {max})"),
        ),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

/// Session variables a client may set for itself. Each is kept per
/// connection by `SetShowHook`; any other `SET` would change the session
/// every client shares, so it is refused.
const CLIENT_SETTINGS: [&str; 8] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "client_encoding",
];

/// Why `statement` is refused, or `None` when it only reads.
pub fn refusal(statement: &Statement) -> Option<String> {
    match statement {
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => None,
        Statement::Explain { statement, .. } => refusal(statement),
        Statement::Set(Set::SetTimeZone { local: false, .. }) => None,
        Statement::Set(Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            ..
        }) if CLIENT_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) => None,
        Statement::Reset(_) if resets(statement).is_some() => None,
        Statement::Set(_) | Statement::Reset(_) => Some(format!(
            "`{statement}` is refused: paicha's settings cannot be changed through SQL \
             (a client may set {})",
            CLIENT_SETTINGS.join(", ")
        )),
        other => Some(format!(
            "paicha is read-only: `{}` is refused (only queries are allowed)",
            kind(other)
        )),
    }
}

/// For a `RESET` of a client's own settings: whether it resets
/// `statement_timeout` (`RESET ALL` does). `None` for any other statement.
fn resets(statement: &Statement) -> Option<bool> {
    let Statement::Reset(r) = statement else {
        return None;
    };
    match &r.reset {
        Reset::ALL => Some(true),
        Reset::ConfigurationParameter(name) => {
            let name = name.to_string().to_lowercase();
            let own = CLIENT_SETTINGS.contains(&name.as_str()) || name == "timezone";
            own.then_some(name == "statement_timeout")
        }
    }
}

/// Carries out an allowed `RESET`: a client's settings are its
/// connection's, kept where the session service reads them.
fn reset(statement: &Statement, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
    let timeout = resets(statement)?;
    if timeout {
        client.metadata_mut().remove("statement_timeout_ms");
        if let Ok(connection) = bounds::CONNECTION.try_with(Arc::clone) {
            connection.set_timeout(None);
        }
    }
    Some(Ok(Response::Execution(pgwire::api::results::Tag::new(
        "RESET",
    ))))
}

/// The statement's leading keywords, without the rest of its text.
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let keep = match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("CREATE") | Some("DROP") | Some("ALTER") => {
            if words
                .get(1)
                .is_some_and(|w| w.eq_ignore_ascii_case("EXTERNAL") || w.eq_ignore_ascii_case("OR"))
            {
                3
            } else {
                2
            }
        }
        _ => 1,
    };
    words
        .into_iter()
        .take(keep)
        .map(|w| w.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_only_error(message: String) -> PgWireError {
    // 25006: read_only_sql_transaction, what PostgreSQL answers a write on a
    // read-only server.
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        "25006".to_string(),
        message,
    )))
}

/// Refuses every statement but reads, before any other hook or the planner
/// sees it; and notes what the connection's queries are bounded by (its
/// `statement_timeout`, the key its CancelRequests will carry).
struct ReadOnly {
    running: Arc<bounds::Connections>,
}

impl ReadOnly {
    fn note(&self, statement: &Statement, client: &(dyn ClientInfo + Send + Sync)) {
        let Ok(connection) = bounds::CONNECTION.try_with(Arc::clone) else {
            return;
        };
        let (pid, secret) = client.pid_and_secret_key();
        self.running
            .register((pid, secret.to_bytes().to_vec()), &connection);
        if let Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) = statement
        {
            if variable
                .to_string()
                .eq_ignore_ascii_case("statement_timeout")
            {
                let value = values.first().map(|v| v.to_string()).unwrap_or_default();
                if let Some(t) = bounds::parse_timeout(&value) {
                    connection.set_timeout(t);
                }
            }
        }
    }
}

/// Why `statement` is refused: by its kind ([`refusal`]), and for a query
/// by its plan, so a query that writes (`SELECT … INTO` creates a table)
/// is refused whatever its text looks like.
async fn refused(statement: &Statement, ctx: &SessionContext) -> Option<String> {
    if let Some(m) = refusal(statement) {
        return Some(m);
    }
    // The queries the statement runs: itself, or a cursor's (whose hook
    // runs it with DataFusion's defaults, which would let it write).
    let queries: Vec<Statement> = match statement {
        Statement::Query(_) => vec![statement.clone()],
        Statement::Declare { stmts } => stmts
            .iter()
            .filter_map(|d| d.for_query.clone().map(Statement::Query))
            .collect(),
        _ => return None,
    };
    for query in queries {
        let wrapped = datafusion::sql::parser::Statement::Statement(Box::new(query));
        // A query that does not plan fails on the normal path with its error.
        let Ok(plan) = ctx.state().statement_to_plan(wrapped).await else {
            continue;
        };
        if crate::read_only().verify_plan(&plan).is_err() {
            return Some(crate::READS_ONLY.to_string());
        }
    }
    None
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.note(statement, &*client);
        if let Some(m) = refused(statement, ctx).await {
            return Some(Err(read_only_error(m)));
        }
        reset(statement, client)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        self.note(statement, client);
        if let Some(m) = refused(statement, ctx).await {
            return Some(Err(read_only_error(m)));
        }
        resets(statement).map(|_| {
            let none = Arc::new(datafusion::common::DFSchema::empty());
            Ok(LogicalPlan::EmptyRelation(
                datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: none,
                },
            ))
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.note(statement, &*client);
        if let Some(m) = refusal(statement) {
            return Some(Err(read_only_error(m)));
        }
        reset(statement, client)
    }
}

/// Answers simple-protocol queries (what Grafana and psql send) through the
/// snapshot's result cache (see [`Results`]).
struct Cached(Arc<Results>);

fn api(e: datafusion::error::DataFusionError) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

impl Cached {
    async fn answer(
        &self,
        sql: &str,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let df = ctx.sql(sql).await.map_err(api)?;
        let (schema, rows) = self.0.rows(sql, df).await.map_err(api)?;
        let table = datafusion::datasource::MemTable::try_new(schema, vec![rows.as_ref().clone()])
            .map_err(api)?;
        let df = ctx.read_table(Arc::new(table)).map_err(api)?;
        let options = Arc::new(pgwire::types::format::FormatOptions::from_client_metadata(
            client.metadata(),
        ));
        let response = datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe(
            df,
            &pgwire::api::portal::Format::UnifiedText,
            Some(options),
        )
        .await?;
        Ok(Response::Query(response))
    }
}

#[async_trait]
impl QueryHook for Cached {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Query(_) = statement else {
            return None;
        };
        Some(self.answer(&statement.to_string(), ctx, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #17: a fresh random salt for an unknown name, against a fixed
    /// one for a real user, told a client which names exist.
    #[test]
    fn an_unknown_user_gets_a_salt_as_stable_as_a_real_ones() {
        let users = PgUsers::parse(["analyst:correct horse"]).unwrap();
        let real = users.password("analyst");
        assert_eq!(real.salt(), users.password("analyst").salt());
        let unknown = users.password("nobody");
        assert_eq!(unknown.salt(), users.password("nobody").salt());
        assert_eq!(
            unknown.salt().map(<[u8]>::len),
            real.salt().map(<[u8]>::len)
        );
        assert_ne!(users.password("somebody").salt(), unknown.salt());
    }
}
