from lowbit.quant.recipes import RECIPE_NAMES, Recipe, get_recipe, recipe_from_dict

__all__ = ["RECIPE_NAMES", "Recipe", "get_recipe", "recipe_from_dict"]
