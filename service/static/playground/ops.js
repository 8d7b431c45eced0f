/* Generated from gradserve's op registry by `python -m service.engine.ops.gen`: do not edit.
 *
 * localText: each op's local derivative in words, written beside a scalar gate's
 * backward step (the ops' `local` field; ops without one are not listed).
 */
(function (root) {
  "use strict";

  root.GradOps = {
    localText: {
      "add": "1",
      "sub": "±1",
      "mul": "the other input",
      "div": "1/b or −a/b²",
      "pow": "b·a^(b−1)",
      "maximum": "[is max]",
      "minimum": "[is min]",
      "neg": "−1",
      "identity": "1",
      "exp": "exp(x)",
      "log": "1/x",
      "sqrt": "1/(2√x)",
      "square": "2x",
      "reciprocal": "−1/x²",
      "sigmoid": "(1−σ)σ",
      "tanh": "1−tanh²",
      "relu": "[x > 0]",
      "erf": "2e^(−x²)/√π",
      "gelu": "Φ(x) + x·φ(x)",
      "leaky_relu": "1 if x > 0, else the slope",
      "elu": "1 if x > 0, else α·eˣ",
      "softplus": "σ(βx)",
      "clip": "[min ≤ x ≤ max]",
      "where": "1 to the chosen input",
      "sign": "0",
      "floor": "0",
      "ceil": "0",
      "prod": "the product of the others"
    },
  };
})(typeof window !== "undefined" ? window : this);
