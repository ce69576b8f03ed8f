//! What an evaluation says about itself: for each line, the base points, which rules gave how many
//! points (and what capped them), and which rules were considered and why they did not apply.

use serde::{Deserialize, Serialize};

use crate::rules::CapKind;

/// The points a basket earns, line by line, with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Points each line earns: its base points plus the points of the rules applied to it.
    pub line_points: Vec<i64>,
    /// The sum of `line_points`: what the purchase earns.
    pub total: i64,
    pub explanation: Vec<LineExplanation>,
}

/// How one line's points came about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineExplanation {
    /// The line's position in the basket, from 0.
    pub line: usize,
    /// Points from the program's base rate (0 when an exclusive rule replaced it).
    pub base_points: i64,
    /// The exclusive rule that replaced the base rate on this line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_replaced_by: Option<String>,
    pub rules_applied: Vec<RuleApplied>,
    pub rules_not_applied: Vec<RuleNotApplied>,
}

/// A rule that gave points on a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleApplied {
    pub rule_id: String,
    pub points: i64,
    /// Set when a cap took some of the rule's points away on this purchase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capped: Option<Capped>,
}

/// What a cap did to a rule's points on a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capped {
    /// The line's points from the rule had there been no cap.
    pub uncapped_points: i64,
    pub by: CapKind,
}

/// A rule considered for a line that gave it nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleNotApplied {
    pub rule_id: String,
    pub reason: String,
}
