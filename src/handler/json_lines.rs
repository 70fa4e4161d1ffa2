//! The handler behind `msgraph-webhooks listen`: every event as a JSON line.

use super::{BoxError, ChangeEvent, Handler, HandlerEvent, LifecycleEvent, ResyncEvent};

/// Writes every event as one JSON line ([`HandlerEvent::to_json`]): the handler
/// behind `msgraph-webhooks listen`.
///
/// A writer thread of its own does the blocking I/O. It writes whatever
/// lines are waiting in one go and flushes before it waits again, so no
/// line ever sits in a buffer; each handler call returns only once its line
/// is flushed, so an event counts as handled only when it was written.
#[derive(Debug, Clone)]
pub struct JsonLines {
    lines: tokio::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>)>,
}

/// Lines waiting for the writer thread at most.
const JSON_LINES_QUEUE: usize = 4096;

impl JsonLines {
    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Lines to `out`, written on a thread of their own.
    ///
    /// # Panics
    ///
    /// If the OS cannot start a thread.
    pub fn new<W: std::io::Write + Send + 'static>(mut out: W) -> Self {
        let (lines, mut waiting) = tokio::sync::mpsc::channel::<(
            Vec<u8>,
            tokio::sync::oneshot::Sender<std::io::Result<()>>,
        )>(JSON_LINES_QUEUE);
        std::thread::Builder::new()
            .name("json-lines".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut acks = Vec::new();
                while let Some((line, ack)) = waiting.blocking_recv() {
                    batch.extend_from_slice(&line);
                    acks.push(ack);
                    while let Ok((line, ack)) = waiting.try_recv() {
                        batch.extend_from_slice(&line);
                        acks.push(ack);
                    }
                    let written = out.write_all(&batch).and_then(|()| out.flush());
                    for ack in acks.drain(..) {
                        let _ = ack.send(match &written {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                    batch.clear();
                }
            })
            .expect("the OS starts the json-lines writer thread");
        Self { lines }
    }

    async fn write(&self, event: HandlerEvent) -> Result<(), BoxError> {
        let mut lines = Vec::with_capacity(512);
        event.write_json(&mut lines)?;
        lines.push(b'\n');
        self.send(lines).await
    }

    /// Hands `lines` to the writer thread and waits until they are flushed.
    async fn send(&self, lines: Vec<u8>) -> Result<(), BoxError> {
        let (ack, written) = tokio::sync::oneshot::channel();
        self.lines
            .send((lines, ack))
            .await
            .map_err(|_| "the json-lines writer thread is gone")?;
        written
            .await
            .map_err(|_| "the json-lines writer thread is gone")??;
        Ok(())
    }
}

impl Handler for JsonLines {
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.write(HandlerEvent::Change(event))
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.write(HandlerEvent::Lifecycle(event))
    }

    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.write(HandlerEvent::Resync(event))
    }

    /// All the batch's lines in one write and one flush.
    async fn on_batch(&self, events: Vec<HandlerEvent>) -> Vec<Result<(), BoxError>> {
        let mut lines = Vec::with_capacity(512 * events.len());
        let mut results: Vec<Result<(), BoxError>> = Vec::with_capacity(events.len());
        for event in &events {
            let start = lines.len();
            match event.write_json(&mut lines) {
                Ok(()) => {
                    lines.push(b'\n');
                    results.push(Ok(()));
                }
                Err(e) => {
                    lines.truncate(start);
                    results.push(Err(e.into()));
                }
            }
        }
        if let Err(e) = self.send(lines).await {
            let why = e.to_string();
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(why.clone().into());
            }
        }
        results
    }
}
