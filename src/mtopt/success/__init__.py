"""mtopt.success"""
