//! Logs: tracing to stdout, JSON or text, with a filter that can change while running.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter at runtime (e.g. from `PUT /loglevel`).
#[derive(Clone)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    /// # Errors
    /// When `directives` is not a valid `RUST_LOG`-style filter.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber.
///
/// # Errors
/// When `level` is not a valid filter or a subscriber is already installed.
pub fn init(level: &str, json: bool) -> Result<LogLevel, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let (filter, handle) = reload::Layer::new(filter);
    // Colour codes only where a person reads a terminal: `kubectl logs` and collectors show
    // them as text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt.json().flatten_event(true)).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogLevel(handle))
}
