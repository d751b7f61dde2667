//! A guest's stdout and stderr: written to weir's log line by line, tagged with the filter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

/// The stream handed to WASI as stdout or stderr.
pub struct LogOutput {
    tag: Arc<Tag>,
}

struct Tag {
    filter: String,
    route: String,
    stream: &'static str,
}

impl LogOutput {
    /// Output of `filter` on `route`, named `stream` in the log.
    pub fn new(filter: &str, route: &str, stream: &'static str) -> LogOutput {
        LogOutput {
            tag: Arc::new(Tag {
                filter: filter.to_owned(),
                route: route.to_owned(),
                stream,
            }),
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            tag: self.tag.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    tag: Arc<Tag>,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::info!(
            route = %self.tag.route,
            filter = %self.tag.filter,
            stream = self.tag.stream,
            "{text}"
        );
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.buf.extend_from_slice(data);
        while let Some(nl) = this.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = this.buf.drain(..=nl).collect();
            this.emit(&line);
        }
        if this.buf.len() >= MAX_LINE {
            let line = std::mem::take(&mut this.buf);
            this.emit(&line);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.emit(&self.buf);
        }
    }
}
