//! `tracing` setup: an `EnvFilter` from `RUST_LOG` (default `info`), text or JSON on stderr.
//! stdout stays free for the lines callers parse.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with span fields (region, account, request id).
    Json,
}

/// Installs the subscriber. `default_level` applies when `RUST_LOG` is unset (`info` for the
/// servers, `warn` for one-shot commands such as `replay`, whose output is their report).
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (impossible in the binary) would only fail to install; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
