//! Overlap: while a layer computes a one-token step, the next layer's records, as the selector predicts them
//! from this layer's FFN input, are read on a second backend and thread; the next layer then reads only what
//! that prediction missed.

use std::time::Instant;

use super::{nanos, FlashFfn};
use crate::io::{AlignedBuf, IoStats, ReadBackend, ReadReq};
use crate::{Error, Result};

/// A read job for the prefetch thread.
struct Job {
    reqs: Vec<ReadReq>,
    buf: AlignedBuf,
}

/// A finished prefetch: the job's buffers back, the outcome and the backend's counters for it.
struct Done {
    reqs: Vec<ReadReq>,
    buf: AlignedBuf,
    result: Result<()>,
    pub(super) io: IoStats,
}

/// A finished prefetch handed to the loop: layer, neurons (ascending), the job's requests and buffer.
type Fetched = (usize, Vec<u32>, Vec<ReadReq>, AlignedBuf);

/// Reads of the next layer's predicted neurons on their own thread and backend.
pub(super) struct Prefetcher {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    done: std::sync::mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Buffers when no job is in flight.
    idle: Option<(Vec<ReadReq>, AlignedBuf)>,
    /// The layer and the neurons (ascending) of the job in flight.
    pending: Option<(usize, Vec<u32>)>,
    /// Counters of the prefetch backend, summed over finished jobs.
    pub(super) io: IoStats,
    /// Its buffer and its backend's scratch (room for a whole layer each), counted in the DRAM in use.
    pub(super) dram_bytes: usize,
}

impl Prefetcher {
    pub(super) fn new(mut backend: Box<dyn ReadBackend>, buf_bytes: usize) -> Result<Prefetcher> {
        // Its buffer (a layer and its alignment) and its backend's scratch (a layer).
        let dram_bytes = buf_bytes + backend.scratch_bytes();
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (tx, done) = std::sync::mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("spike-prefetch".into())
            .spawn(move || {
                for mut job in rx {
                    backend.reset_stats();
                    let result = backend.read_batch(&job.reqs, &mut job.buf);
                    let io = backend.stats().clone();
                    if tx.send(Done { reqs: job.reqs, buf: job.buf, result, io }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the prefetch thread: {e}")))?;
        Ok(Prefetcher {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            idle: Some((Vec::new(), AlignedBuf::new(buf_bytes)?)),
            pending: None,
            io: IoStats::default(),
            dram_bytes,
        })
    }

    /// Waits for the job in flight, if any; returns its layer, neurons and buffer (which the caller gives
    /// back with [`Prefetcher::give_back`]).
    fn wait(&mut self) -> Result<Option<Fetched>> {
        let Some((layer, neurons)) = self.pending.take() else { return Ok(None) };
        let d = self.done.recv().map_err(|_| Error::Invalid("the prefetch thread stopped".into()))?;
        self.io.add(&d.io);
        match d.result {
            Ok(()) => Ok(Some((layer, neurons, d.reqs, d.buf))),
            Err(e) => {
                self.idle = Some((d.reqs, d.buf));
                Err(Error::InLayer { layer, source: Box::new(e) })
            }
        }
    }

    fn give_back(&mut self, reqs: Vec<ReadReq>, buf: AlignedBuf) {
        self.idle = Some((reqs, buf));
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FlashFfn {
    /// Takes the records of a finished prefetch for `layer` into `staging`: the missing neurons it holds go
    /// to the end of `self.missing` (after those still to read), their rows copied in place after the read.
    /// Returns how many of `self.missing` (its first ones) must still be read.
    pub(super) fn use_prefetch(&mut self, layer: usize) -> Result<usize> {
        let Some(p) = self.prefetch.as_mut() else { return Ok(self.missing.len()) };
        let t0 = Instant::now();
        let got = p.wait()?;
        self.stats.io_ns += nanos(t0);
        let Some((pl, neurons, reqs, mut buf)) = got else { return Ok(self.missing.len()) };
        // The cost model's prediction for the prefetch's reads, on the requests it hands back (instrumentation:
        // not timed as memory management).
        if let Some((cost, depth)) = &self.cost {
            self.stats.predicted_io_ns += (cost.predict(&reqs, *depth)?.seconds * 1e9) as u64;
        }
        let t1 = Instant::now();
        let payload = self.fmt.payload;
        if pl == layer && neurons == self.missing {
            // The prefetch read exactly the missing records, in order (hybrid and naive rows, whose selection
            // does not change): its buffer becomes the staging buffer, no copy.
            std::mem::swap(&mut self.staging, &mut buf);
            self.staging_at = 0;
            p.give_back(reqs, buf);
            self.stats.mm_ns += nanos(t1);
            let t2 = Instant::now();
            self.check(layer, 0..self.missing.len())?;
            self.stats.io_ns += nanos(t2);
            return Ok(0);
        }
        // Split missing into (not prefetched) ++ (prefetched), remembering where each prefetched row is.
        let mut from = Vec::new();
        if pl == layer {
            let mut rest = Vec::with_capacity(self.missing.len());
            for &m in &self.missing {
                match neurons.binary_search(&m) {
                    Ok(k) => from.push((m, k)),
                    Err(_) => rest.push(m),
                }
            }
            let n_rest = rest.len();
            rest.extend(from.iter().map(|&(m, _)| m));
            self.missing = rest;
            self.staging.resize(self.missing.len() * payload)?;
            self.staging_at = 0;
            let dst = self.staging.as_mut_slice();
            for (i, &(_, k)) in from.iter().enumerate() {
                let at = (n_rest + i) * payload;
                dst[at..at + payload].copy_from_slice(&buf.as_slice()[k * payload..(k + 1) * payload]);
            }
        }
        p.give_back(reqs, buf);
        self.stats.mm_ns += nanos(t1);
        // The prefetched records this layer uses, checked as the ones it reads now will be.
        let (n, taken) = (self.missing.len(), from.len());
        let t2 = Instant::now();
        self.check(layer, n - taken..n)?;
        self.stats.io_ns += nanos(t2);
        Ok(n - taken)
    }

    /// Starts reading, for layer `layer`, the neurons the selector predicts from `x` (this layer's FFN input)
    /// that the next layer's cache does not hold.
    pub(super) fn start_prefetch(&mut self, layer: usize, x: &[f32]) -> Result<()> {
        let Some(p) = self.prefetch.as_mut() else { return Ok(()) };
        let Some((mut reqs, mut buf)) = p.idle.take() else { return Ok(()) };
        let t0 = Instant::now();
        self.selector.select(layer, x, &mut self.next)?;
        self.stats.select_ns += nanos(t0);
        let t1 = Instant::now();
        if let Some(c) = self.caches.as_ref() {
            let c = &c[layer];
            self.next.retain(|&n| !c.contains(n));
        }
        let payload = self.fmt.payload;
        reqs.clear();
        for (k, &i) in self.next.iter().enumerate() {
            self.layout.neuron_reads(layer, i as usize, k * payload, &mut reqs)?;
        }
        buf.resize(self.next.len() * payload)?;
        self.stats.neurons_read += self.next.len() as u64;
        p.pending = Some((layer, self.next.clone()));
        p.jobs
            .as_ref()
            .expect("the job channel lives as long as the prefetcher")
            .send(Job { reqs, buf })
            .map_err(|_| Error::Invalid("the prefetch thread stopped".into()))?;
        self.stats.mm_ns += nanos(t1);
        Ok(())
    }
}
