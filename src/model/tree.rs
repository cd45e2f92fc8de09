//! A tree ensemble (gradient-boosted regression trees) and its evaluator.
//!
//! The semantics are XGBoost's, so a model trained there predicts the same here: at a split
//! node an input goes left when `(f32) x < threshold`, a missing input (NaN) follows the
//! node's default direction, the leaves of all trees are summed onto the base margin and the
//! objective's link turns the sum into a prediction.
//!
//! Layout: every node of every tree lives in one flat array of 16-byte nodes, renumbered so
//! that the two children of a split are adjacent (right = left + 1). Walking a tree touches
//! one small contiguous block, with no pointers and no allocation. This module never parses a
//! model file (that is [`crate::import`]) and never knows feature names: split features are
//! model-input indices of the bundle's [`crate::features::FeatureEncoder`].

use crate::error::BundleError;

/// How the summed margin becomes a prediction; XGBoost's regression objectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// `reg:squarederror`: identity link.
    SquaredError,
    /// `reg:absoluteerror`: identity link.
    AbsoluteError,
    /// `reg:tweedie`: log link, prediction = exp(margin).
    Tweedie,
    /// `count:poisson`: log link, prediction = exp(margin).
    Poisson,
    /// `reg:gamma`: log link, prediction = exp(margin).
    Gamma,
}

impl Objective {
    /// Every objective, for error messages.
    pub const ALL: [Objective; 5] = [
        Objective::SquaredError,
        Objective::AbsoluteError,
        Objective::Tweedie,
        Objective::Poisson,
        Objective::Gamma,
    ];

    /// XGBoost's name for it, e.g. `count:poisson`.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::SquaredError => "reg:squarederror",
            Objective::AbsoluteError => "reg:absoluteerror",
            Objective::Tweedie => "reg:tweedie",
            Objective::Poisson => "count:poisson",
            Objective::Gamma => "reg:gamma",
        }
    }

    /// Parses XGBoost's name; `reg:linear` is the old spelling of `reg:squarederror`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reg:linear" => Some(Objective::SquaredError),
            _ => Objective::ALL.into_iter().find(|o| o.as_str() == name),
        }
    }

    /// True for the objectives that predict `exp(margin)`.
    fn log_link(self) -> bool {
        matches!(
            self,
            Objective::Tweedie | Objective::Poisson | Objective::Gamma
        )
    }

    /// The margin of a base score: XGBoost stores `base_score` on the prediction scale and
    /// starts boosting from its inverse link (`ProbToMargin`).
    pub fn base_margin(self, base_score: f64) -> Result<f64, String> {
        if !base_score.is_finite() {
            return Err(format!("base_score {base_score} is not a finite number"));
        }
        if self.log_link() {
            if base_score <= 0.0 {
                return Err(format!(
                    "base_score {base_score} must be positive for {} (its link is log)",
                    self.as_str()
                ));
            }
            // XGBoost takes the log in single precision.
            Ok(f64::from((base_score as f32).ln()))
        } else {
            Ok(base_score)
        }
    }

    /// The prediction for a summed margin (`PredTransform`).
    #[inline]
    fn transform(self, margin: f64) -> f64 {
        if self.log_link() {
            margin.exp()
        } else {
            margin
        }
    }
}

/// The ensemble as flat, per-node arrays: the bundle's storage layout. Node `i` of the
/// ensemble is a leaf when `split_feature[i] < 0`; child indices are positions in these arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeArrays {
    /// The objective.
    pub objective: Objective,
    /// XGBoost's `base_score`, on the prediction scale.
    pub base_score: f64,
    /// The root node of each tree.
    pub roots: Vec<i32>,
    /// The model input each split reads; -1 for a leaf.
    pub split_feature: Vec<i32>,
    /// The split threshold: go left when `(f32) x < threshold`.
    pub threshold: Vec<f32>,
    /// The left child; -1 for a leaf.
    pub left_child: Vec<i32>,
    /// The right child; -1 for a leaf.
    pub right_child: Vec<i32>,
    /// Where a missing (NaN) input goes: left when true.
    pub default_left: Vec<bool>,
    /// The leaf value (learning rate and tree weight applied); 0 for a split.
    pub leaf_value: Vec<f64>,
}

/// One node: 16 bytes, four to a cache line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    /// The threshold (exactly an `f32`) of a split, or the value of a leaf.
    value: f64,
    /// The model input a split reads, with [`DEFAULT_LEFT`] set when NaN goes left;
    /// [`LEAF`] for a leaf.
    feature: u32,
    /// The left child; the right one follows it.
    left: u32,
}

const LEAF: u32 = u32::MAX;
const DEFAULT_LEFT: u32 = 1 << 31;

/// A validated tree ensemble, ready to score.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    objective: Objective,
    base_score: f64,
    base_margin: f64,
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// One more than the largest model input a split reads (0 for constant trees).
    inputs_read: usize,
}

impl TreeEnsemble {
    /// Bytes held by the node arrays.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.roots.capacity() * std::mem::size_of::<u32>()
    }

    /// Validates the arrays and lays the trees out for scoring. Refuses anything that could
    /// make scoring fail: ragged arrays, children out of range, cycles or shared nodes,
    /// non-finite leaves or NaN thresholds.
    pub fn new(a: &TreeArrays) -> Result<Self, BundleError> {
        let n = a.split_feature.len();
        if [
            a.threshold.len(),
            a.left_child.len(),
            a.right_child.len(),
            a.default_left.len(),
            a.leaf_value.len(),
        ]
        .iter()
        .any(|&len| len != n)
        {
            return Err(BundleError::Spec(
                "the node arrays of the tree ensemble differ in length".into(),
            ));
        }
        if n >= (DEFAULT_LEFT as usize) {
            return Err(BundleError::Spec(format!("{n} nodes are too many")));
        }
        if !a.base_score.is_finite() {
            return Err(BundleError::NotFinite(format!(
                "base_score {} is not a finite number",
                a.base_score
            )));
        }
        let base_margin = a
            .objective
            .base_margin(a.base_score)
            .map_err(BundleError::Spec)?;
        let mut nodes = Vec::with_capacity(n);
        let mut roots = Vec::with_capacity(a.roots.len());
        let mut seen = vec![false; n];
        let mut inputs_read = 0usize;
        let index = |i: i32, what: &str| -> Result<usize, BundleError> {
            usize::try_from(i).ok().filter(|&i| i < n).ok_or_else(|| {
                BundleError::Spec(format!("{what} {i} is not a node (the ensemble has {n})"))
            })
        };
        // Breadth-first per tree: the children of each split are pushed together, so they
        // land side by side and the evaluator needs only the left index.
        let mut queue = std::collections::VecDeque::new();
        for (t, &root) in a.roots.iter().enumerate() {
            let root = index(root, &format!("the root of tree {t}"))?;
            roots.push(nodes.len() as u32);
            queue.push_back(root);
            // Placeholder for the root; filled when popped.
            nodes.push(Node {
                value: 0.0,
                feature: LEAF,
                left: 0,
            });
            let mut slot = nodes.len() - 1;
            while let Some(old) = queue.pop_front() {
                if std::mem::replace(&mut seen[old], true) {
                    return Err(BundleError::Spec(format!(
                        "node {old} is reached twice: the trees are not trees"
                    )));
                }
                let node = if a.split_feature[old] < 0 {
                    let v = a.leaf_value[old];
                    if !v.is_finite() {
                        return Err(BundleError::NotFinite(format!(
                            "leaf {old} has the non-finite value {v}"
                        )));
                    }
                    Node {
                        value: v,
                        feature: LEAF,
                        left: 0,
                    }
                } else {
                    let feature = a.split_feature[old] as u32;
                    let threshold = a.threshold[old];
                    if threshold.is_nan() {
                        return Err(BundleError::NotFinite(format!(
                            "split {old} has a NaN threshold"
                        )));
                    }
                    let l = index(a.left_child[old], &format!("the left child of node {old}"))?;
                    let r = index(
                        a.right_child[old],
                        &format!("the right child of node {old}"),
                    )?;
                    inputs_read = inputs_read.max(feature as usize + 1);
                    let left = nodes.len() as u32;
                    for child in [l, r] {
                        queue.push_back(child);
                        nodes.push(Node {
                            value: 0.0,
                            feature: LEAF,
                            left: 0,
                        });
                    }
                    let flag = if a.default_left[old] { DEFAULT_LEFT } else { 0 };
                    if feature >= DEFAULT_LEFT {
                        return Err(BundleError::Spec(format!(
                            "split {old} reads input {feature}"
                        )));
                    }
                    Node {
                        value: f64::from(threshold),
                        feature: feature | flag,
                        left,
                    }
                };
                nodes[slot] = node;
                slot += 1;
            }
        }
        Ok(TreeEnsemble {
            objective: a.objective,
            base_score: a.base_score,
            base_margin,
            nodes,
            roots,
            inputs_read,
        })
    }

    /// The ensemble as flat arrays, for the bundle file.
    pub fn to_arrays(&self) -> TreeArrays {
        let n = self.nodes.len();
        let mut a = TreeArrays {
            objective: self.objective,
            base_score: self.base_score,
            roots: self.roots.iter().map(|&r| r as i32).collect(),
            split_feature: Vec::with_capacity(n),
            threshold: Vec::with_capacity(n),
            left_child: Vec::with_capacity(n),
            right_child: Vec::with_capacity(n),
            default_left: Vec::with_capacity(n),
            leaf_value: Vec::with_capacity(n),
        };
        for node in &self.nodes {
            if node.feature == LEAF {
                a.split_feature.push(-1);
                a.threshold.push(0.0);
                a.left_child.push(-1);
                a.right_child.push(-1);
                a.default_left.push(false);
                a.leaf_value.push(node.value);
            } else {
                a.split_feature.push((node.feature & !DEFAULT_LEFT) as i32);
                a.threshold.push(node.value as f32);
                a.left_child.push(node.left as i32);
                a.right_child.push(node.left as i32 + 1);
                a.default_left.push(node.feature & DEFAULT_LEFT != 0);
                a.leaf_value.push(0.0);
            }
        }
        a
    }

    /// The prediction for one input vector; NaN inputs follow each split's default direction.
    #[inline]
    pub fn predict(&self, inputs: &[f64]) -> f64 {
        self.objective.transform(self.margin(inputs))
    }

    /// The summed margin, before the link: base margin plus one leaf per tree.
    #[inline]
    pub fn margin(&self, inputs: &[f64]) -> f64 {
        let mut sum = self.base_margin;
        for &root in &self.roots {
            sum += self.leaf(root as usize, inputs);
        }
        sum
    }

    #[inline]
    fn leaf(&self, mut i: usize, inputs: &[f64]) -> f64 {
        loop {
            let node = self.nodes[i];
            if node.feature == LEAF {
                return node.value;
            }
            let x = inputs
                .get((node.feature & !DEFAULT_LEFT) as usize)
                .copied()
                .unwrap_or(f64::NAN);
            let left = if x.is_nan() {
                node.feature & DEFAULT_LEFT != 0
            } else {
                // XGBoost compares in single precision; the threshold is exactly an f32.
                f64::from(x as f32) < node.value
            };
            i = node.left as usize + usize::from(!left);
        }
    }

    /// The objective.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// XGBoost's `base_score`, on the prediction scale.
    pub fn base_score(&self) -> f64 {
        self.base_score
    }

    /// The number of trees.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// The number of nodes of all trees.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The depth of the deepest tree (a lone leaf has depth 0).
    pub fn max_depth(&self) -> usize {
        fn depth(nodes: &[Node], i: usize) -> usize {
            let n = nodes[i];
            if n.feature == LEAF {
                0
            } else {
                1 + depth(nodes, n.left as usize).max(depth(nodes, n.left as usize + 1))
            }
        }
        self.roots
            .iter()
            .map(|&r| depth(&self.nodes, r as usize))
            .max()
            .unwrap_or(0)
    }

    /// The distinct model inputs the splits read, sorted.
    pub fn inputs_used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self
            .nodes
            .iter()
            .filter(|n| n.feature != LEAF)
            .map(|n| (n.feature & !DEFAULT_LEFT) as usize)
            .collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// One more than the largest model input a split reads.
    pub fn inputs_read(&self) -> usize {
        self.inputs_read
    }

    /// A synthetic ensemble of `trees` complete trees of `depth` over `width` inputs, for
    /// benchmarks: thresholds and leaves are drawn from a fixed seed.
    pub fn synthetic(trees: usize, depth: usize, width: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut a = TreeArrays {
            objective: Objective::SquaredError,
            base_score: 0.5,
            roots: Vec::new(),
            split_feature: Vec::new(),
            threshold: Vec::new(),
            left_child: Vec::new(),
            right_child: Vec::new(),
            default_left: Vec::new(),
            leaf_value: Vec::new(),
        };
        let per_tree = (1usize << (depth + 1)) - 1;
        let splits = (1usize << depth) - 1;
        for t in 0..trees {
            let base = t * per_tree;
            a.roots.push(base as i32);
            for k in 0..per_tree {
                if k < splits {
                    a.split_feature
                        .push(rng.random_range(0..width.max(1)) as i32);
                    a.threshold.push(rng.random_range(0.0f32..1.0));
                    a.left_child.push((base + 2 * k + 1) as i32);
                    a.right_child.push((base + 2 * k + 2) as i32);
                    a.default_left.push(rng.random_bool(0.5));
                    a.leaf_value.push(0.0);
                } else {
                    a.split_feature.push(-1);
                    a.threshold.push(0.0);
                    a.left_child.push(-1);
                    a.right_child.push(-1);
                    a.default_left.push(false);
                    a.leaf_value.push(rng.random_range(-1.0..1.0));
                }
            }
        }
        // The arrays are built valid above.
        TreeEnsemble::new(&a).unwrap_or_else(|e| unreachable!("synthetic trees are valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree 0: x0 < 2 ? (x1 < 0.5 ? 1 : 2) : 3, NaN at the root goes right, at x1 left.
    /// Tree 1: a lone leaf 0.25. Node ids deliberately out of breadth-first order.
    fn arrays(objective: Objective, base_score: f64) -> TreeArrays {
        TreeArrays {
            objective,
            base_score,
            roots: vec![0, 5],
            split_feature: vec![0, -1, 1, -1, -1, -1],
            threshold: vec![2.0, 0.0, 0.5, 0.0, 0.0, 0.0],
            left_child: vec![2, -1, 3, -1, -1, -1],
            right_child: vec![1, -1, 4, -1, -1, -1],
            default_left: vec![false, false, true, false, false, false],
            leaf_value: vec![0.0, 3.0, 0.0, 1.0, 2.0, 0.25],
        }
    }

    #[test]
    fn trees_route_inputs_and_missing_values_as_xgboost_does() {
        let t = TreeEnsemble::new(&arrays(Objective::SquaredError, 0.5)).unwrap();
        assert_eq!(t.predict(&[1.0, 0.0]), 0.5 + 1.0 + 0.25);
        assert_eq!(t.predict(&[1.0, 0.5]), 0.5 + 2.0 + 0.25, "x < t is strict");
        assert_eq!(t.predict(&[2.0, 0.0]), 0.5 + 3.0 + 0.25);
        assert_eq!(
            t.predict(&[f64::NAN, 0.0]),
            0.5 + 3.0 + 0.25,
            "NaN goes right"
        );
        assert_eq!(
            t.predict(&[0.0, f64::NAN]),
            0.5 + 1.0 + 0.25,
            "NaN goes left"
        );
        // 1.9999999999 rounds to 2.0 in single precision, so it goes right as in XGBoost.
        assert_eq!(t.predict(&[1.999_999_999_9, 0.0]), 0.5 + 3.0 + 0.25);
        assert_eq!(t.trees(), 2);
        assert_eq!(t.max_depth(), 2);
        assert_eq!(t.inputs_used(), vec![0, 1]);
    }

    #[test]
    fn log_link_objectives_start_from_the_log_of_base_score() {
        for o in [Objective::Poisson, Objective::Tweedie, Objective::Gamma] {
            let t = TreeEnsemble::new(&arrays(o, 2.0)).unwrap();
            let want = ((2.0f32).ln() as f64 + 1.0 + 0.25).exp();
            assert!((t.predict(&[0.0, 0.0]) - want).abs() < 1e-12);
            assert!(TreeEnsemble::new(&arrays(o, 0.0)).is_err());
        }
        assert_eq!(
            Objective::parse("reg:linear"),
            Some(Objective::SquaredError)
        );
        assert_eq!(Objective::parse("binary:logistic"), None);
    }

    #[test]
    fn the_storage_arrays_round_trip() {
        let t = TreeEnsemble::new(&arrays(Objective::Tweedie, 1.5)).unwrap();
        let back = TreeEnsemble::new(&t.to_arrays()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn malformed_trees_are_refused() {
        let mut a = arrays(Objective::SquaredError, 0.5);
        a.left_child[0] = 9;
        assert!(TreeEnsemble::new(&a)
            .unwrap_err()
            .to_string()
            .contains("not a node"));
        let mut a = arrays(Objective::SquaredError, 0.5);
        a.left_child[2] = 0;
        assert!(TreeEnsemble::new(&a)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut a = arrays(Objective::SquaredError, 0.5);
        a.leaf_value[1] = f64::INFINITY;
        assert!(TreeEnsemble::new(&a).is_err());
        let mut a = arrays(Objective::SquaredError, 0.5);
        a.threshold.pop();
        assert!(TreeEnsemble::new(&a).is_err());
    }

    #[test]
    fn synthetic_ensembles_have_the_asked_shape() {
        let t = TreeEnsemble::synthetic(100, 6, 40, 1);
        assert_eq!(t.trees(), 100);
        assert_eq!(t.max_depth(), 6);
        assert_eq!(t.nodes(), 100 * 127);
        assert!(t.predict(&[0.5; 40]).is_finite());
    }
}
