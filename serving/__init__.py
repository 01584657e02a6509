"""fusionrec.serving"""
