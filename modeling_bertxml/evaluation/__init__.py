"""How a model is scored: the metrics of Edin et al. (`metrics`, numpy only), the same as an offline `evaluate`
module (`metrics_evaluate`), and the model card's figures (`plots`), drawn from numbers only."""
