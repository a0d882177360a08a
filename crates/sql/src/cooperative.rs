//! Makes row-multiplying operators give way, so cancellation and timeouts stop every query.
//!
//! DataFusion yields to the Tokio scheduler when a scan produces a batch (its
//! `EnsureCooperative` rule). A join or `UNNEST` can produce thousands of batches from one
//! input batch without yielding: an aggregate over a cross join then runs for seconds in one
//! `poll`, so neither a cancel request nor the time limit can interrupt it, and it holds a
//! runtime thread the server needs for other calls. [`YieldAfterJoins`] wraps the output of
//! such operators in a [`CooperativeExec`], which spends Tokio's task budget per batch and so
//! makes the consumer yield every few hundred batches.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::unnest::UnnestExec;

/// Wraps every operator with several inputs (joins, unions) and every `UNNEST` in a
/// [`CooperativeExec`]. Runs last, after the plan's shape is final.
#[derive(Debug, Default)]
pub struct YieldAfterJoins;

/// Operators whose output can be much larger than any one input batch.
fn multiplies_rows(plan: &dyn ExecutionPlan) -> bool {
    plan.children().len() > 1 || plan.as_any().is::<UnnestExec>()
}

impl PhysicalOptimizerRule for YieldAfterJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if multiplies_rows(node.as_ref()) {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "YieldAfterJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::SqlEngine;

    #[tokio::test]
    async fn joins_and_unnest_are_wrapped() {
        let engine = SqlEngine::new().unwrap();
        let df = engine
            .sql(
                "SELECT count(*) FROM generate_series(1, 10) a CROSS JOIN generate_series(1, 10) b",
            )
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let coop = text.find("CooperativeExec").expect(&text);
        let join = text.find("CrossJoinExec").expect(&text);
        assert!(coop < join, "the join's output is wrapped:\n{text}");
    }

    /// The query the rule exists for: without it, this aggregate never yields, so the
    /// timeout below could not fire until the whole cross join was done.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cross_join_aggregate_can_be_interrupted() {
        let engine = SqlEngine::new().unwrap();
        let mut stream = engine
            .execute_stream(
                "SELECT sum(a.value * b.value) FROM generate_series(1, 20000) a \
                 CROSS JOIN generate_series(1, 200000) b",
            )
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            futures::StreamExt::next(&mut stream).await
        })
        .await;
        assert!(outcome.is_err(), "4 billion pairs cannot finish in 200 ms");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "the timeout fired late: {:?}",
            started.elapsed()
        );
    }
}
