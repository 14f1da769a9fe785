//! Cleaning and deduplication together, in parallel where it can be: documents arrive in
//! batches; cleaning and fingerprinting run on all cores (rayon); the duplicate decisions are
//! then made in order on one thread, so the output does not depend on the number of threads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::clean::{CleanConfig, CleanReport, Cleaner};
use crate::dedup::{DedupConfig, DedupStats, Deduplicator, Verdict};

/// Counts of a [`CorpusPipeline`] run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// What cleaning saw and removed.
    pub clean: CleanReport,
    /// What deduplication saw and removed (of the documents that survived cleaning).
    pub dedup: DedupStats,
}

/// Clean, then deduplicate, streaming batch by batch.
#[derive(Clone, Debug)]
pub struct CorpusPipeline {
    cleaner: Cleaner,
    dedup: Deduplicator,
    clean_report: CleanReport,
}

impl CorpusPipeline {
    /// A pipeline with these settings.
    pub fn new(clean: CleanConfig, dedup: DedupConfig) -> Result<Self, DataError> {
        Ok(Self {
            cleaner: Cleaner::new(clean)?,
            dedup: Deduplicator::new(dedup)?,
            clean_report: CleanReport::default(),
        })
    }

    /// The deduplicator (for its banding and configuration).
    pub fn deduplicator(&self) -> &Deduplicator {
        &self.dedup
    }

    /// Cleans and deduplicates one batch; returns the kept documents in input order. Earlier
    /// batches count: a document duplicating one from any earlier batch is removed.
    pub fn process(&mut self, docs: Vec<String>) -> Vec<String> {
        self.process_with_verdicts(docs)
            .into_iter()
            .filter_map(|(doc, verdict)| verdict.is_unique().then_some(doc))
            .collect()
    }

    /// Like [`CorpusPipeline::process`], but returns every document that survived cleaning
    /// (cleaned) with its duplicate verdict.
    pub fn process_with_verdicts(&mut self, docs: Vec<String>) -> Vec<(String, Verdict)> {
        let cleaner = &self.cleaner;
        let dedup = &self.dedup;
        let (cleaned, report) = docs
            .par_iter()
            .fold(
                || (Vec::new(), CleanReport::default()),
                |(mut out, mut report), doc| {
                    if let Some(text) = cleaner.clean(doc, &mut report) {
                        let fp = dedup.fingerprint(&text);
                        out.push((text, fp));
                    }
                    (out, report)
                },
            )
            .reduce(
                || (Vec::new(), CleanReport::default()),
                |(mut a, mut ra), (b, rb)| {
                    a.extend(b);
                    ra.merge(&rb);
                    (a, ra)
                },
            );
        self.clean_report.merge(&report);
        cleaned
            .into_iter()
            .map(|(text, fp)| {
                let verdict = self.dedup.insert(fp);
                (text, verdict)
            })
            .collect()
    }

    /// The counts so far.
    pub fn report(&self) -> PipelineReport {
        PipelineReport {
            clean: self.clean_report.clone(),
            dedup: self.dedup.stats().clone(),
        }
    }
}
