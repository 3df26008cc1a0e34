"""The stateless reverb rollup function: one downbeat event in, at most one BarReport out."""
