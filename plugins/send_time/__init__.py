"""Send-time optimization: each contact's best hour from their own human engagement (issue 24).

``profile`` computes the per-contact profile and plans a send inside a campaign's window
(``planned_time`` lets a plugin's ``gateway_send_time_plan`` replace the formula);
``capacity`` fits the planned times under the throttle, warming caps and the send window.
"""
