"""A/B tests of campaign variants: sound statistics and planned looks (issue 24).

``statistics`` holds the exact tests (Wilson interval, pooled two-proportion z-test,
chi-square with Yates' correction for 2x2), ``decision`` the rule that turns the counts at a
planned look into a winner, a wait, or a fallback (``decide_look`` lets a plugin's
``gateway_ab_decide`` replace it), ``assignment`` the stable variant of each contact.
"""
