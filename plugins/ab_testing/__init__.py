"""A/B tests of campaign variants: sound statistics and planned looks (issue 24).

``statistics`` holds the exact tests (Wilson interval, pooled two-proportion z-test,
chi-square with Yates' correction for 2x2), ``decision`` the rule that turns the counts at a
planned look into a winner, a wait, or a fallback. The campaign plugin calls them; the hook
that lets a plugin replace the rule is added with it.
"""
