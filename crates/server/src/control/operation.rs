//! The control plane's operations, as HealthLake's API names them in `X-Amz-Target`.

use std::fmt;
use std::str::FromStr;

use super::ControlError;

/// One HealthLake operation this server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateDatastore,
    DescribeDatastore,
    ListDatastores,
    DeleteDatastore,
    TagResource,
    UntagResource,
    ListTagsForResource,
    StartImportJob,
    DescribeImportJob,
    ListImportJobs,
    StartExportJob,
    DescribeExportJob,
    ListExportJobs,
    CancelExportJob,
}

impl Operation {
    pub const ALL: [Operation; 14] = [
        Self::CreateDatastore,
        Self::DescribeDatastore,
        Self::ListDatastores,
        Self::DeleteDatastore,
        Self::TagResource,
        Self::UntagResource,
        Self::ListTagsForResource,
        Self::StartImportJob,
        Self::DescribeImportJob,
        Self::ListImportJobs,
        Self::StartExportJob,
        Self::DescribeExportJob,
        Self::ListExportJobs,
        Self::CancelExportJob,
    ];

    /// The operation's name in `X-Amz-Target: HealthLake.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateDatastore => "CreateFHIRDatastore",
            Self::DescribeDatastore => "DescribeFHIRDatastore",
            Self::ListDatastores => "ListFHIRDatastores",
            Self::DeleteDatastore => "DeleteFHIRDatastore",
            Self::TagResource => "TagResource",
            Self::UntagResource => "UntagResource",
            Self::ListTagsForResource => "ListTagsForResource",
            Self::StartImportJob => "StartFHIRImportJob",
            Self::DescribeImportJob => "DescribeFHIRImportJob",
            Self::ListImportJobs => "ListFHIRImportJobs",
            Self::StartExportJob => "StartFHIRExportJob",
            Self::DescribeExportJob => "DescribeFHIRExportJob",
            Self::ListExportJobs => "ListFHIRExportJobs",
            Self::CancelExportJob => "CancelFHIRExportJob",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Self, ControlError> {
        Self::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                ControlError::Validation(format!("Operation {s} is not supported by this server"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips_through_its_target_name() {
        for op in Operation::ALL {
            assert_eq!(op.name().parse::<Operation>().unwrap(), op);
        }
        let err = "DeleteEverything".parse::<Operation>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Operation DeleteEverything is not supported by this server"
        );
    }
}
