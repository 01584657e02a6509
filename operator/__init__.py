"""fusionrec.operator"""
