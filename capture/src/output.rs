//! Output of records: JSON lines on stdout, or nowhere.
//!
//! Runs on a blocking thread: it drains batches from the capture threads and writes them through
//! one buffered, locked stdout, flushing after each batch so live records appear promptly.

use std::io::{self, Write};

use tokio::sync::mpsc;

use crate::{
    config::OutputKind,
    json::{self, LineContext},
    source::Batch,
};

/// What the output did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutputStats {
    /// Records written.
    pub written: u64,
    /// Records received but not written (observations left out, or output `none`).
    pub skipped: u64,
}

/// Writes every batch until all capture threads have hung up.
pub fn drain(
    mut rx: mpsc::Receiver<Batch>,
    kind: OutputKind,
    observations: bool,
    host: &str,
    mut w: impl Write,
) -> io::Result<OutputStats> {
    let mut stats = OutputStats::default();
    while let Some(batch) = rx.blocking_recv() {
        let ctx = LineContext { host, interface: &batch.interface };
        for r in &batch.records {
            let keep = kind == OutputKind::Jsonl && (observations || matches!(r, ntp_wire::Record::Session(_)));
            if keep {
                json::write_record(&mut w, ctx, r)?;
                stats.written += 1;
            } else {
                stats.skipped += 1;
            }
        }
        w.flush()?;
    }
    w.flush()?;
    Ok(stats)
}
